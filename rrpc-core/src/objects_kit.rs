//! Ready-made exported objects: functions and closures, classes (callable
//! constructors), and namespaces (a root of named exports).

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use crate::error::RemoteError;
use crate::remote::{Args, CallContext, Member, Remote, Reply};
use crate::value::Value;

type SyncFn = dyn Fn(Args) -> Result<Value, RemoteError> + Send + Sync;
type AsyncFnBox = dyn Fn(CallContext, Args) -> futures::future::BoxFuture<'static, Result<Value, RemoteError>>
    + Send
    + Sync;

enum Body {
    /// Runs on the blocking pool (it may block, or make blocking calls).
    Blocking(Arc<SyncFn>),
    /// Runs as a task.
    Async(Arc<AsyncFnBox>),
}

/// A function or closure exported by reference: the peer calls it through a
/// proxy (`proxy.invoke(args)`), and it runs here.
///
/// ```
/// use rrpc_core::{Function, Value};
/// let loc = Function::blocking("loc", |mut args| {
///     let n: i64 = args.take(0, "n")?;
///     println!("loc {n}");
///     Ok(Value::from(n + 1))
/// });
/// let as_argument: Value = loc.into_value();
/// # drop(as_argument);
/// ```
pub struct Function {
    name: String,
    signature: String,
    body: Body,
}

impl Function {
    /// A function whose body may block; it runs on the blocking pool.
    pub fn blocking<F, T>(name: impl Into<String>, f: F) -> Function
    where
        F: Fn(Args) -> Result<T, RemoteError> + Send + Sync + 'static,
        T: Into<Value>,
    {
        let name = name.into();
        Function {
            signature: format!("{name}(...)"),
            name,
            body: Body::Blocking(Arc::new(move |args| f(args).map(Into::into))),
        }
    }

    /// An async function; it runs as a task and is dropped when cancelled.
    pub fn from_async<F, Fut, T>(name: impl Into<String>, f: F) -> Function
    where
        F: Fn(CallContext, Args) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, RemoteError>> + Send + 'static,
        T: Into<Value>,
    {
        let name = name.into();
        Function {
            signature: format!("{name}(...)"),
            name,
            body: Body::Async(Arc::new(move |cx, args| {
                let fut = f(cx, args);
                Box::pin(async move { fut.await.map(Into::into) })
            })),
        }
    }

    /// Sets the signature shown in listings, e.g. `loc(n: int) -> int`.
    pub fn with_signature(mut self, signature: impl Into<String>) -> Function {
        self.signature = signature.into();
        self
    }

    /// The function as a value to pass by reference.
    pub fn into_value(self) -> Value {
        Value::Object(Arc::new(self))
    }
}

impl fmt::Debug for Function {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Function({})", self.signature)
    }
}

impl Remote for Function {
    fn type_name(&self) -> &str {
        &self.name
    }

    fn invoke(self: Arc<Self>, cx: CallContext, args: Args) -> Reply {
        match &self.body {
            Body::Blocking(f) => {
                let f = f.clone();
                Reply::Blocking(Box::new(move || f(args)))
            }
            Body::Async(f) => Reply::Future(f(cx, args)),
        }
    }

    fn call(self: Arc<Self>, cx: CallContext, method: &str, args: Args) -> Reply {
        // `f.__call__(...)`, for peers that only know method calls.
        match method {
            "__call__" => self.invoke(cx, args),
            _ => Reply::err(RemoteError::no_such_method(&self.name, method)),
        }
    }

    fn members(&self) -> Vec<Member> {
        vec![Member::method("__call__", self.signature.clone())]
    }
}

type Constructor = dyn Fn(Args) -> Result<Arc<dyn Remote>, RemoteError> + Send + Sync;

/// A class: calling it constructs a new object, returned by reference
/// (the article's `MyClass(0)`).
pub struct Class {
    name: String,
    signature: String,
    make: Arc<Constructor>,
}

impl Class {
    /// A class whose constructor builds objects of type `R` from the arguments.
    pub fn new<R, F>(name: impl Into<String>, make: F) -> Class
    where
        R: Remote,
        F: Fn(Args) -> Result<R, RemoteError> + Send + Sync + 'static,
    {
        let name = name.into();
        Class {
            signature: format!("{name}(...)"),
            name,
            make: Arc::new(move |args| make(args).map(|obj| Arc::new(obj) as Arc<dyn Remote>)),
        }
    }

    /// Sets the constructor signature shown in listings.
    pub fn with_signature(mut self, signature: impl Into<String>) -> Class {
        self.signature = signature.into();
        self
    }
}

impl fmt::Debug for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Class({})", self.signature)
    }
}

impl Remote for Class {
    fn type_name(&self) -> &str {
        &self.name
    }

    fn invoke(self: Arc<Self>, _cx: CallContext, args: Args) -> Reply {
        let make = self.make.clone();
        // Constructors may do I/O: run them on the blocking pool.
        Reply::Blocking(Box::new(move || make(args).map(Value::Object)))
    }

    fn members(&self) -> Vec<Member> {
        vec![Member::method("__call__", self.signature.clone())]
    }
}

/// A set of named exports: what a server offers as its root.
///
/// Reading attribute `name` returns the export (objects by reference, data by
/// value); calling method `name` invokes it (a function, or a class's
/// constructor); the listing names every export.
#[derive(Default, Clone)]
pub struct Namespace {
    name: String,
    entries: BTreeMap<String, Value>,
}

impl Namespace {
    /// An empty namespace called `name`.
    pub fn new(name: impl Into<String>) -> Namespace {
        Namespace {
            name: name.into(),
            entries: BTreeMap::new(),
        }
    }

    /// Adds an export (replacing one of the same name).
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<Value>) -> &mut Namespace {
        self.entries.insert(name.into(), value.into());
        self
    }

    /// Adds an export, builder style.
    pub fn with(mut self, name: impl Into<String>, value: impl Into<Value>) -> Namespace {
        self.insert(name, value);
        self
    }

    /// Adds an exported object, builder style.
    pub fn with_object<R: Remote>(self, name: impl Into<String>, obj: R) -> Namespace {
        self.with(name, Value::Object(Arc::new(obj)))
    }

    /// The export called `name`.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.entries.get(name)
    }

    /// The names of the exports.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }
}

impl fmt::Debug for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Namespace")
            .field("name", &self.name)
            .field("exports", &self.entries.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Remote for Namespace {
    fn type_name(&self) -> &str {
        &self.name
    }

    fn get_attr(self: Arc<Self>, _cx: CallContext, name: &str) -> Reply {
        match self.entries.get(name) {
            Some(v) => Reply::Ready(Ok(v.clone())),
            None => Reply::err(RemoteError::no_such_attribute(&self.name, name)),
        }
    }

    fn call(self: Arc<Self>, cx: CallContext, method: &str, args: Args) -> Reply {
        match self.entries.get(method) {
            Some(Value::Object(obj)) => obj.clone().invoke(cx, args),
            Some(Value::Proxy(p)) => {
                let call = p.invoke(args.into_vec());
                Reply::future(async move { call.await.map_err(RemoteError::from) })
            }
            Some(other) => Reply::err(RemoteError::new(
                crate::error::ErrorKind::NotCallable,
                format!(
                    "{}.{method} is a {} value, not callable",
                    self.name,
                    other.type_name()
                ),
            )),
            None => Reply::err(RemoteError::no_such_method(&self.name, method)),
        }
    }

    fn members(&self) -> Vec<Member> {
        self.entries
            .iter()
            .map(|(name, v)| match v {
                Value::Object(obj) => {
                    match obj.members().into_iter().find(|m| m.name == "__call__") {
                        Some(call) => Member::method(name.clone(), call.signature),
                        None => Member::attribute(name.clone(), obj.type_name().to_owned()),
                    }
                }
                other => Member::attribute(name.clone(), other.type_name()),
            })
            .collect()
    }
}
