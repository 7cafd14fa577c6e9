//! The `fs` service against a real server: every method, and its errors.
#![allow(clippy::unwrap_used)]

mod common;

use common::{expect_err, i, s, within, Stock};
use rrpc_client::transfer::{self, TransferOptions};
use rrpc_client::{ErrorKind, Value};
use rrpc_server::services::ToolboxOptions;

#[tokio::test]
async fn files_and_directories_round_trip() {
    within(30, async {
        let stock = Stock::start(ToolboxOptions::default()).await;
        let fs = stock.service("fs").await;
        let tmp: String = fs.call("tempdir", ("t-",)).await.unwrap().decode().unwrap();
        assert!(fs
            .call("isdir", (tmp.as_str(),))
            .await
            .unwrap()
            .as_bool()
            .unwrap());

        // The working directory is per connection.
        fs.call("chdir", (tmp.as_str(),)).await.unwrap();
        assert_eq!(
            fs.call("getcwd", ()).await.unwrap().as_str(),
            Some(tmp.as_str())
        );
        let other = stock.another_connection().await;
        let other_fs = other.root().get("fs").await.unwrap().into_proxy().unwrap();
        assert_ne!(
            other_fs.call("getcwd", ()).await.unwrap().as_str(),
            Some(tmp.as_str())
        );

        // Relative paths resolve against it.
        fs.call("mkdir", ("a/b/c", true)).await.unwrap();
        fs.call("mkdir", ("solo",)).await.unwrap();
        assert_eq!(
            fs.call("write", ("a/hello.txt", "hello\nworld\n"))
                .await
                .unwrap()
                .as_i64(),
            Some(12)
        );
        fs.call("append", ("a/hello.txt", "!\n")).await.unwrap();
        assert_eq!(
            fs.call("read", ("a/hello.txt",)).await.unwrap().as_str(),
            Some("hello\nworld\n!\n")
        );
        let listing: Vec<String> = fs.call("listdir", ("a",)).await.unwrap().decode().unwrap();
        assert_eq!(listing, vec!["b", "hello.txt"]);
        assert!(fs
            .call("exists", ("a/b/c",))
            .await
            .unwrap()
            .as_bool()
            .unwrap());
        assert!(fs
            .call("isfile", ("a/hello.txt",))
            .await
            .unwrap()
            .as_bool()
            .unwrap());
        assert!(!fs.call("isfile", ("a",)).await.unwrap().as_bool().unwrap());

        let st = fs.call("stat", ("a/hello.txt",)).await.unwrap();
        assert_eq!(s(&st, "kind"), "file");
        assert_eq!(i(&st, "size"), 14);
        fs.call("chmod", ("a/hello.txt", 0o600)).await.unwrap();
        assert_eq!(
            i(&fs.call("stat", ("a/hello.txt",)).await.unwrap(), "mode"),
            0o600
        );

        fs.call("symlink", ("hello.txt", "a/link")).await.unwrap();
        assert!(fs
            .call("islink", ("a/link",))
            .await
            .unwrap()
            .as_bool()
            .unwrap());
        assert_eq!(
            s(&fs.call("lstat", ("a/link",)).await.unwrap(), "kind"),
            "symlink"
        );
        assert_eq!(
            fs.call("readlink", ("a/link",)).await.unwrap().as_str(),
            Some("hello.txt")
        );
        fs.call("mkfifo", ("a/pipe",)).await.unwrap();
        assert_eq!(
            s(&fs.call("stat", ("a/pipe",)).await.unwrap(), "kind"),
            "fifo"
        );

        fs.call("rename", ("a/hello.txt", "a/renamed.txt"))
            .await
            .unwrap();
        assert!(!fs
            .call("exists", ("a/hello.txt",))
            .await
            .unwrap()
            .as_bool()
            .unwrap());

        // File objects by reference: write, seek, readline, chunked reads, close.
        let f = fs
            .call("open", ("data.txt", "w+"))
            .await
            .unwrap()
            .into_proxy()
            .unwrap();
        f.call("write", ("line one\nline two\n",)).await.unwrap();
        f.call("seek", (0,)).await.unwrap();
        assert_eq!(
            f.call("readline", ()).await.unwrap().as_str(),
            Some("line one\n")
        );
        assert_eq!(f.call("read", (4,)).await.unwrap().as_str(), Some("line"));
        assert_eq!(
            f.call("read_bytes", (100,)).await.unwrap(),
            Value::Bytes(" two\n".into())
        );
        f.call("close", ()).await.unwrap();
        assert_eq!(f.get("closed").await.unwrap().as_bool(), Some(true));
        let closed = f.call("read", ()).await;
        assert!(expect_err(closed, ErrorKind::Io).contains("closed"));

        fs.call("remove", ("a/renamed.txt",)).await.unwrap();
        fs.call("unlink", ("a/pipe",)).await.unwrap();
        fs.call("rmdir", ("solo",)).await.unwrap();
        let not_empty = fs.call("rmdir", ("a",)).await;
        expect_err(not_empty, ErrorKind::Io);
        fs.call("rmdir", ("a", true)).await.unwrap();
        fs.call("rmdir", (tmp.as_str(), true)).await.unwrap();
        assert!(!fs
            .call("exists", (tmp.as_str(),))
            .await
            .unwrap()
            .as_bool()
            .unwrap());
    })
    .await
}

#[tokio::test]
async fn errors_name_their_cause_and_the_connection_goes_on() {
    within(30, async {
        let stock = Stock::start(ToolboxOptions::default()).await;
        let fs = stock.service("fs").await;
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().display().to_string();

        let missing = format!("{base}/no-such-file");
        let msg = expect_err(
            fs.call("read", (missing.as_str(),)).await,
            ErrorKind::NotFound,
        );
        assert!(
            msg.contains("no-such-file") && msg.contains("No such file"),
            "{msg}"
        );
        let msg = expect_err(
            fs.call("open", (missing.as_str(),)).await,
            ErrorKind::NotFound,
        );
        assert!(msg.contains("no-such-file"), "{msg}");
        expect_err(
            fs.call("chdir", (missing.as_str(),)).await,
            ErrorKind::NotFound,
        );
        expect_err(
            fs.call("remove", (missing.as_str(),)).await,
            ErrorKind::NotFound,
        );

        // Permission errors that hold even for root: the kernel's own files.
        let msg = expect_err(
            fs.call("remove", ("/proc/version",)).await,
            ErrorKind::PermissionDenied,
        );
        assert!(
            msg.contains("/proc/version") && msg.contains("not permitted"),
            "{msg}"
        );
        let msg = expect_err(
            fs.call("mkdir", ("/sys/rrpc-test",)).await,
            ErrorKind::PermissionDenied,
        );
        assert!(msg.contains("/sys/rrpc-test"), "{msg}");

        // Bad arguments say which argument.
        let msg = expect_err(
            fs.call("chmod", (base.as_str(), "rwx")).await,
            ErrorKind::BadArgument,
        );
        assert!(msg.contains("mode"), "{msg}");
        expect_err(fs.call("nosuch", ()).await, ErrorKind::NoSuchMethod);

        // Still usable.
        assert!(fs
            .call("isdir", (base.as_str(),))
            .await
            .unwrap()
            .as_bool()
            .unwrap());
    })
    .await
}

#[tokio::test]
async fn transfers_are_checked_end_to_end() {
    within(60, async {
        let stock = Stock::start(ToolboxOptions::default()).await;
        let fs = stock.service("fs").await;
        let dir = tempfile::tempdir().unwrap();
        let remote = dir.path().join("up.bin").display().to_string();
        let data: Vec<u8> = (0..3_000_001u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let opts = TransferOptions {
            chunk_size: 256 * 1024,
            ..TransferOptions::default()
        };
        let up = transfer::upload_from(&fs, &data[..], &remote, &opts)
            .await
            .unwrap();
        assert_eq!(up.bytes, data.len() as u64);
        assert_eq!(std::fs::read(&remote).unwrap(), data);
        let mut back = Vec::new();
        let down = transfer::download_to(&fs, &remote, &mut back, &opts)
            .await
            .unwrap();
        assert_eq!(back, data);
        assert_eq!(down.sha256, up.sha256);

        // A wrong digest is refused and leaves no file.
        let up = fs
            .call("upload", (format!("{remote}.2"),))
            .await
            .unwrap()
            .into_proxy()
            .unwrap();
        up.call("write", (0, Value::Bytes("abc".into())))
            .await
            .unwrap();
        let msg = expect_err(up.call("finish", ("00",)).await, ErrorKind::Io);
        assert!(msg.contains("checksum mismatch"), "{msg}");
        assert!(!std::path::Path::new(&format!("{remote}.2")).exists());
        // Out-of-order or duplicate chunks are refused.
        let up = fs
            .call("upload", (format!("{remote}.3"),))
            .await
            .unwrap()
            .into_proxy()
            .unwrap();
        up.call("write", (0, Value::Bytes("abc".into())))
            .await
            .unwrap();
        let msg = expect_err(
            up.call("write", (0, Value::Bytes("abc".into()))).await,
            ErrorKind::BadArgument,
        );
        assert!(msg.contains("offset"), "{msg}");
        // An abandoned upload leaves no temporary file.
        drop(up);
        let name_left = || {
            std::fs::read_dir(dir.path())
                .unwrap()
                .filter_map(|e| e.ok())
                .any(|e| e.file_name().to_string_lossy().contains("rrpc-upload"))
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while name_left() && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(!name_left(), "a temporary upload file was left behind");
        // Downloading something missing names it.
        let missing = format!("{remote}.missing");
        let err = transfer::download_to(&fs, &missing, Vec::new(), &opts)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("up.bin.missing"), "{err}");
    })
    .await
}
