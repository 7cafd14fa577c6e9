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
