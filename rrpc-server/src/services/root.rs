//! The stock server's root: the exposed services, the demo objects, and a
//! clear `NotExposed` answer for the services this server hides.

use std::collections::BTreeMap;
use std::sync::Arc;

use rrpc_core::{
    Args, CallContext, ErrorKind, Function, Member, Namespace, Remote, RemoteError, Reply, Value,
};

use super::fs::{Fs, FsPolicy};
use super::proc::Proc;
use super::script::Script;
use super::sys::Sys;
use super::{Service, ToolboxOptions};
use crate::demo;

/// The root object of the stock `rrpc-server`.
#[derive(Debug)]
pub struct StockRoot {
    exports: Arc<Namespace>,
    /// Names the server knows but does not expose, with the reason.
    hidden: BTreeMap<&'static str, String>,
}

/// Builds the stock root: the exposed services of `options`, plus the demo
/// objects of the LXF article (`open`, `path`, `MyClass`, `map`). `open` is
/// the file service's (same restrictions); `path` is `sys.path`.
pub fn stock_root(options: &ToolboxOptions) -> std::io::Result<StockRoot> {
    let policy = Arc::new(FsPolicy::new(
        options.fs_root.as_deref(),
        options.read_only,
    )?);
    let sys = Arc::new(Sys::new());
    let mut ns = Namespace::new("rrpc-server");
    demo::add_to(&mut ns);
    // The article's `gandalf.path` is the server's `sys.path`.
    ns.insert("path", Value::Object(sys.path()));
    let mut hidden = BTreeMap::new();
    for service in Service::ALL {
        if !options.exposes(service) {
            hidden.insert(
                service.name(),
                format!(
                    "the service `{service}` is not exposed by this server \
                     (it was started without it: see --expose / --no-{service})"
                ),
            );
            continue;
        }
        let obj: Value = match service {
            Service::Fs => Value::object(Fs::new(policy.clone())),
            Service::Proc => Value::object(Proc::new(policy.clone(), sys.env())),
            Service::Sys => Value::Object(sys.clone()),
            Service::Script => Value::object(Script::new()),
        };
        ns.insert(service.name(), obj);
    }
    if options.exposes(Service::Fs) {
        let fs = Arc::new(Fs::new(policy));
        ns.insert(
            "open",
            Function::from_async("open", move |cx: CallContext, args: Args| {
                let fs = fs.clone();
                async move { fs.open_reply(cx, args).await }
            })
            .with_signature("open(path: str, mode: str = \"r\") -> File")
            .into_value(),
        );
    } else {
        hidden.insert(
            "open",
            "`open` belongs to the file service, which this server does not expose".to_owned(),
        );
    }
    Ok(StockRoot {
        exports: Arc::new(ns),
        hidden,
    })
}

impl StockRoot {
    fn not_exposed(&self, name: &str) -> Option<RemoteError> {
        self.hidden
            .get(name)
            .map(|why| RemoteError::new(ErrorKind::NotExposed, why.clone()))
    }

    /// The names clients can reach.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.exports.names()
    }
}

impl Remote for StockRoot {
    fn type_name(&self) -> &str {
        "rrpc-server"
    }

    fn call(self: Arc<Self>, cx: CallContext, method: &str, args: Args) -> Reply {
        match self.not_exposed(method) {
            Some(err) => Reply::err(err),
            None => self.exports.clone().call(cx, method, args),
        }
    }

    fn get_attr(self: Arc<Self>, cx: CallContext, name: &str) -> Reply {
        match self.not_exposed(name) {
            Some(err) => Reply::err(err),
            None => self.exports.clone().get_attr(cx, name),
        }
    }

    fn members(&self) -> Vec<Member> {
        self.exports.members()
    }
}
