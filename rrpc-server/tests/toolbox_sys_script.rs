//! The `sys` and `script` services against a real server.
#![allow(clippy::unwrap_used)]

mod common;

use common::{expect_err, i, s, within, Stock};
use rrpc_client::{ErrorKind, Value};
use rrpc_server::services::ToolboxOptions;

#[tokio::test]
async fn sys_reports_the_host() {
    within(30, async {
        let stock = Stock::start(ToolboxOptions::default()).await;
        let sys = stock.service("sys").await;
        let hostname = sys.call("hostname", ()).await.unwrap();
        assert!(!hostname.as_str().unwrap().is_empty());
        assert_eq!(sys.get("hostname").await.unwrap(), hostname);
        assert_eq!(
            sys.call("pid", ()).await.unwrap().as_i64(),
            Some(i64::from(std::process::id()))
        );
        let user = sys.call("user", ()).await.unwrap();
        assert!(!s(&user, "name").is_empty());
        assert_eq!(
            s(&sys.call("os", ()).await.unwrap(), "name"),
            std::env::consts::OS
        );
        assert!(sys.call("cpu_count", ()).await.unwrap().as_i64().unwrap() >= 1);
        let memory = sys.call("memory", ()).await.unwrap();
        assert!(i(&memory, "total") >= i(&memory, "available"));
        let load = sys
            .call("load", ())
            .await
            .unwrap()
            .decode::<Vec<f64>>()
            .unwrap();
        assert_eq!(load.len(), 3);
        assert!(sys.call("uptime", ()).await.unwrap().as_f64().unwrap() > 0.0);
        let time = sys.call("time", ()).await.unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let skew = (time.get("unix").unwrap().as_f64().unwrap() - now).abs();
        assert!(skew < 5.0, "skew {skew}");
        assert!(s(&time, "utc").ends_with('Z'));
        assert_eq!(
            sys.call("version", ()).await.unwrap().as_str(),
            Some(env!("CARGO_PKG_VERSION"))
        );
        let info = sys.call("info", ()).await.unwrap();
        assert!(info.get("memory").is_some() && info.get("hostname").is_some());

        // The environment is a remote map; sys.path a remote list, the root's `path`.
        let env = sys.get("env").await.unwrap().into_proxy().unwrap();
        assert!(env
            .call("contains", ("PATH",))
            .await
            .unwrap()
            .as_bool()
            .unwrap());
        env.call("set", ("RRPC_X", "1")).await.unwrap();
        assert_eq!(
            env.call("get", ("RRPC_X",)).await.unwrap().as_str(),
            Some("1")
        );
        expect_err(env.call("set", ("RRPC_Y", 5)).await, ErrorKind::BadArgument);
        env.call("remove", ("RRPC_X",)).await.unwrap();
        assert_eq!(
            env.call("get", ("RRPC_X", "gone")).await.unwrap().as_str(),
            Some("gone")
        );
        let path = sys.get("path").await.unwrap().into_proxy().unwrap();
        path.call("append", ("/opt/lib",)).await.unwrap();
        let root_path = stock
            .conn
            .root()
            .get("path")
            .await
            .unwrap()
            .into_proxy()
            .unwrap();
        assert!(root_path.same_object(&path));
        assert_eq!(
            path.call("list", ())
                .await
                .unwrap()
                .decode::<Vec<String>>()
                .unwrap(),
            vec!["/opt/lib"]
        );

        expect_err(sys.call("hostname", (1,)).await, ErrorKind::BadArgument);
        expect_err(sys.call("nosuch", ()).await, ErrorKind::NoSuchMethod);
    })
    .await
}

#[tokio::test]
async fn script_scope_is_per_connection() {
    within(30, async {
        let stock = Stock::start(ToolboxOptions::default()).await;
        let script = stock.service("script").await;
        // The article's steps.
        script.call("execute", ("n=2",)).await.unwrap();
        assert_eq!(
            script.call("eval", ("n+1",)).await.unwrap().as_i64(),
            Some(3)
        );
        script
            .call(
                "execute",
                ("let words = [\"a\", \"b\"]; fn twice(x) { x * 2 }",),
            )
            .await
            .unwrap();
        assert_eq!(
            script
                .call(
                    "eval",
                    ("#{ n: twice(n), words: words, ok: true, half: 0.5 }",)
                )
                .await
                .unwrap(),
            Value::Map(vec![
                ("half".into(), 0.5.into()),
                ("n".into(), 4.into()),
                ("ok".into(), true.into()),
                ("words".into(), Value::List(vec!["a".into(), "b".into()])),
            ])
        );
        script.call("set", ("data", vec![1, 2, 3])).await.unwrap();
        assert_eq!(
            script
                .call("eval", ("data.len() + n",))
                .await
                .unwrap()
                .as_i64(),
            Some(5)
        );
        assert_eq!(script.call("get", ("n",)).await.unwrap().as_i64(), Some(2));

        // Another connection has a scope of its own.
        let other = stock.another_connection().await;
        let other_script = other
            .root()
            .get("script")
            .await
            .unwrap()
            .into_proxy()
            .unwrap();
        let msg = expect_err(
            other_script.call("eval", ("n",)).await,
            ErrorKind::Custom("ScriptError".into()),
        );
        assert!(msg.contains("Variable not found: n"), "{msg}");
    })
    .await
}

#[tokio::test]
async fn script_errors_and_limits_are_clear() {
    within(60, async {
        let stock = Stock::start(ToolboxOptions::default()).await;
        let script = stock.service("script").await;
        let kind = ErrorKind::Custom("ScriptError".into());
        let msg = expect_err(script.call("eval", ("1 +",)).await, kind.clone());
        assert!(msg.contains("eval") && msg.contains("line 1"), "{msg}");
        let msg = expect_err(
            script.call("execute", ("throw \"boom\"",)).await,
            kind.clone(),
        );
        assert!(msg.contains("boom"), "{msg}");
        let msg = expect_err(script.call("execute", ("loop { }",)).await, kind.clone());
        assert!(msg.to_lowercase().contains("too many operations"), "{msg}");
        let msg = expect_err(
            script
                .call("eval", ("let s = \"x\"; loop { s += s; }",))
                .await,
            kind.clone(),
        );
        assert!(msg.to_lowercase().contains("length of string"), "{msg}");
        let msg = expect_err(
            script.call("execute", ("import \"x\" as y;",)).await,
            kind.clone(),
        );
        assert!(!msg.is_empty());
        expect_err(script.call("get", ("nope",)).await, ErrorKind::NotFound);
        // The scope survives the errors.
        script.call("execute", ("n=2",)).await.unwrap();
        assert_eq!(
            script.call("eval", ("n+1",)).await.unwrap().as_i64(),
            Some(3)
        );
        script.call("reset", ()).await.unwrap();
        assert_eq!(script.call("vars", ()).await.unwrap(), Value::List(vec![]));
    })
    .await
}
