//! `--fs-root` confinement under attack: a dangling symlink that leads out
//! of the root is never followed out, by any writing call.
#![allow(clippy::unwrap_used)]

mod common;

use common::{within, Stock};
use rrpc_server::services::ToolboxOptions;

#[tokio::test]
async fn a_dangling_symlink_never_writes_outside_the_root() {
    within(30, async {
        let base = tempfile::tempdir().unwrap();
        let root = base.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let outside = base.path().join("outside_new.txt");
        let stock = Stock::start(ToolboxOptions::default().fs_root(&root)).await;
        let fs = stock.service("fs").await;
        fs.call("mkdir", ("a/b", true)).await.unwrap();
        // `up` is refused (it leaves the root) or, if made, never followed out.
        let _ = fs.call("symlink", ("../..", "a/b/up")).await;
        let made = fs
            .call("symlink", ("up/../outside_new.txt", "a/b/evil"))
            .await;
        assert!(made.is_err(), "the escaping link was made: {made:?}");
        // Planted behind the server's back, the link is never followed out.
        std::os::unix::fs::symlink("up/../outside_new.txt", root.join("a/b/evil")).unwrap();
        assert!(fs.call("write", ("a/b/evil", "X")).await.is_err());
        assert!(fs.call("append", ("a/b/evil", "X")).await.is_err());
        assert!(stock
            .conn
            .root()
            .call("open", ("a/b/evil", "w"))
            .await
            .is_err());
        // Moved elsewhere by rename, the link still leads nowhere outside.
        fs.call("rename", ("a/b/evil", "a/moved")).await.unwrap();
        assert!(fs.call("write", ("a/moved", "X")).await.is_err());
        assert!(!outside.exists(), "a file was created outside the root");
        let _ = std::fs::remove_file(&outside);
    })
    .await
}

/// The rename race: a directory inside the root keeps being swapped with a
/// symlink to a directory outside it, while a client reads and appends
/// through the path. Checking a path and then opening it again by
/// name lost this race (19 reads and 26 appends outside in 8 s); resolving
/// beneath the root's handle at every use cannot.
#[tokio::test]
async fn a_rename_race_never_lets_a_client_read_or_write_outside() {
    within(60, async {
        let base = tempfile::tempdir().unwrap();
        let root = base.path().join("root");
        let outside = base.path().join("outside");
        std::fs::create_dir_all(root.join("x")).unwrap();
        std::fs::create_dir(&outside).unwrap();
        const MARKER: &str = "OUTSIDE-MARKER";
        std::fs::write(outside.join("target.txt"), MARKER).unwrap();
        std::fs::write(root.join("x/target.txt"), "inside").unwrap();
        // Planted by someone else on the host: `y` leads out of the root.
        std::os::unix::fs::symlink("../outside", root.join("y")).unwrap();
        let stock = Stock::start(ToolboxOptions::default().fs_root(&root)).await;
        // The swapper runs on the host, as another job of the same user
        // could (a confined client cannot even move the outside link).
        let until = std::time::Instant::now() + std::time::Duration::from_secs(3);
        let dir = root.clone();
        let swapping = std::thread::spawn(move || {
            let mut swaps = 0u32;
            while std::time::Instant::now() < until {
                let _ = std::fs::rename(dir.join("x"), dir.join("tmp"));
                let _ = std::fs::rename(dir.join("y"), dir.join("x"));
                let _ = std::fs::rename(dir.join("tmp"), dir.join("y"));
                swaps += 1;
            }
            swaps
        });
        let fs = stock.service("fs").await;
        let (mut reads, mut appends) = (0u32, 0u32);
        while std::time::Instant::now() < until {
            if let Ok(value) = fs.call("read", ("x/target.txt",)).await {
                reads += 1;
                let text = match &value {
                    rrpc_client::Value::Str(s) => s.clone(),
                    rrpc_client::Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
                    other => panic!("read returned {other:?}"),
                };
                assert!(!text.contains(MARKER), "read a file outside the root");
            }
            if fs.call("append", ("x/target.txt", "A")).await.is_ok() {
                appends += 1;
            }
        }
        let swaps = swapping.join().unwrap();
        assert!(swaps > 10, "the renamer barely ran ({swaps} swaps)");
        assert!(
            reads > 0 && appends > 0,
            "the reader never got through ({reads}, {appends})"
        );
        assert_eq!(
            std::fs::read_to_string(outside.join("target.txt")).unwrap(),
            MARKER,
            "a file outside the root was written"
        );
    })
    .await
}

/// A FIFO with no writer and an endless device cannot hold a thread or grow
/// the server: `fs.read` answers at once, and other calls are served.
#[tokio::test]
async fn reads_of_fifos_and_devices_answer_at_once() {
    within(30, async {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let stock = Stock::start(ToolboxOptions::default()).await;
        let fs = stock.service("fs").await;
        for path in [fifo.to_str().unwrap(), "/dev/zero"] {
            let answer = fs
                .call("read", (path,))
                .timeout(std::time::Duration::from_secs(5))
                .await;
            let err = answer.unwrap_err();
            assert!(err.remote().is_some(), "{path}: {err}");
        }
        let listed = fs.call("listdir", (dir.path().to_str().unwrap(),)).await;
        assert!(listed.is_ok(), "{listed:?}");
    })
    .await
}
