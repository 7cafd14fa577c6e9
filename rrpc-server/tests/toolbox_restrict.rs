//! Restrictions of the stock server: services not exposed, a read-only file
//! root; each refusal a clear error, the connection still usable.
#![allow(clippy::unwrap_used)]

mod common;

use common::{expect_err, within, Stock};
use rrpc_client::{ErrorKind, Value};
use rrpc_server::services::{Service, ToolboxOptions};

#[tokio::test]
async fn hidden_services_answer_not_exposed() {
    within(30, async {
        let stock = Stock::start(ToolboxOptions::default().expose_only([Service::Sys])).await;
        let root = stock.conn.root();
        for name in ["fs", "proc", "script"] {
            let msg = expect_err(root.get(name).await, ErrorKind::NotExposed);
            assert!(msg.contains(name) && msg.contains("not exposed"), "{msg}");
        }
        let msg = expect_err(
            root.call("open", ("/etc/hostname",)).await,
            ErrorKind::NotExposed,
        );
        assert!(msg.contains("open"), "{msg}");
        // What is not a service at all is still just missing.
        expect_err(root.get("nosuch").await, ErrorKind::NoSuchAttribute);
        // The listing shows what is there.
        let names: Vec<String> = root
            .members()
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.name)
            .collect();
        assert!(
            names.contains(&"sys".to_owned()) && !names.contains(&"fs".to_owned()),
            "{names:?}"
        );
        // And the exposed one works, on the same connection.
        let sys = root.get("sys").await.unwrap().into_proxy().unwrap();
        assert!(sys.call("pid", ()).await.unwrap().as_i64().unwrap() > 0);
    })
    .await
}

#[tokio::test]
async fn a_read_only_root_refuses_writes_and_paths_outside() {
    within(30, async {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("inside.txt"), "inside").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret.txt"), "secret").unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("escape")).unwrap();

        let options = ToolboxOptions::default()
            .fs_root(dir.path())
            .read_only(true);
        let stock = Stock::start(options).await;
        let fs = stock.service("fs").await;
        let root = dir.path().canonicalize().unwrap().display().to_string();
        assert_eq!(
            fs.call("getcwd", ()).await.unwrap().as_str(),
            Some(root.as_str())
        );
        assert_eq!(fs.get("read_only").await.unwrap().as_bool(), Some(true));

        // Reading inside works, relative or absolute.
        assert_eq!(
            fs.call("read", ("inside.txt",)).await.unwrap().as_str(),
            Some("inside")
        );
        let listing: Vec<String> = fs
            .call("listdir", (root.as_str(),))
            .await
            .unwrap()
            .decode()
            .unwrap();
        assert_eq!(listing, vec!["escape", "inside.txt", "sub"]);

        // Outside the root: absolute, `..`, and through a symlink.
        let secret = outside.path().join("secret.txt").display().to_string();
        for path in [
            secret.as_str(),
            "../../../../etc/hostname",
            "escape/secret.txt",
            "/",
        ] {
            let msg = expect_err(fs.call("read", (path,)).await, ErrorKind::PermissionDenied);
            assert!(
                msg.contains("outside the server's file root"),
                "{path}: {msg}"
            );
        }
        let msg = expect_err(fs.call("chdir", ("..",)).await, ErrorKind::PermissionDenied);
        assert!(msg.contains("outside"), "{msg}");
        let msg = expect_err(
            stock.conn.root().call("open", (secret.as_str(),)).await,
            ErrorKind::PermissionDenied,
        );
        assert!(msg.contains("outside"), "{msg}");

        // Every write is refused, naming the read-only mode.
        let writes: Vec<(&str, Vec<Value>)> = vec![
            ("write", vec!["new.txt".into(), "x".into()]),
            ("mkdir", vec!["newdir".into()]),
            ("remove", vec!["inside.txt".into()]),
            ("rmdir", vec!["sub".into()]),
            ("rename", vec!["inside.txt".into(), "moved.txt".into()]),
            ("chmod", vec!["inside.txt".into(), 0o777.into()]),
            ("symlink", vec!["inside.txt".into(), "l".into()]),
            ("mkfifo", vec!["fifo".into()]),
            ("upload", vec!["up.bin".into()]),
            ("tempdir", vec![]),
        ];
        for (method, args) in writes {
            let msg = expect_err(fs.call(method, args).await, ErrorKind::PermissionDenied);
            assert!(msg.contains("read-only"), "{method}: {msg}");
        }
        let msg = expect_err(
            fs.call("open", ("inside.txt", "w")).await,
            ErrorKind::PermissionDenied,
        );
        assert!(msg.contains("read-only"), "{msg}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("inside.txt")).unwrap(),
            "inside"
        );

        // Still usable after all that.
        fs.call("chdir", ("sub",)).await.unwrap();
        assert!(fs
            .call("getcwd", ())
            .await
            .unwrap()
            .as_str()
            .unwrap()
            .ends_with("/sub"));
    })
    .await
}

#[tokio::test]
async fn a_writable_root_still_keeps_writes_inside() {
    within(30, async {
        let dir = tempfile::tempdir().unwrap();
        let stock = Stock::start(ToolboxOptions::default().fs_root(dir.path())).await;
        let fs = stock.service("fs").await;
        fs.call("write", ("ok.txt", "fine")).await.unwrap();
        let tmp: String = fs.call("tempdir", ()).await.unwrap().decode().unwrap();
        assert!(tmp.starts_with(&dir.path().canonicalize().unwrap().display().to_string()));
        let msg = expect_err(
            fs.call("write", ("/tmp/rrpc-outside.txt", "no")).await,
            ErrorKind::PermissionDenied,
        );
        assert!(msg.contains("outside"), "{msg}");
        let msg = expect_err(
            fs.call("symlink", ("/etc", "etc")).await,
            ErrorKind::PermissionDenied,
        );
        assert!(msg.contains("outside"), "{msg}");
        let msg = expect_err(
            fs.call("rmdir", (".", true)).await,
            ErrorKind::PermissionDenied,
        );
        assert!(msg.contains("file root"), "{msg}");
    })
    .await
}
