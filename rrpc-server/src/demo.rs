//! The `demo` objects of the stock server: just enough for the LXF article's
//! RPyC session to run unchanged — a remote `open`, a remote `path` list
//! standing in for `sys.path`, the article's `MyClass(t)`, and `map`.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rrpc_core::{
    Args, CallContext, Class, ErrorKind, Function, Member, Namespace, Remote, RemoteError, Reply,
    Value,
};

/// The demo namespace: `open`, `path`, `MyClass`, `map`.
pub fn namespace() -> Namespace {
    let mut ns = Namespace::new("demo");
    add_to(&mut ns);
    ns
}

/// Adds the demo exports to an existing namespace.
pub fn add_to(ns: &mut Namespace) {
    ns.insert(
        "open",
        Function::blocking("open", |mut args| {
            args.expect_count(1, 2)?;
            let path: String = args.take(0, "path")?;
            let mode: String = args.take_opt(1, "mode")?.unwrap_or_else(|| "r".to_owned());
            RemoteFile::open(&path, &mode).map(Value::object)
        })
        .with_signature("open(path: str, mode: str = \"r\") -> File")
        .into_value(),
    );
    ns.insert("path", Value::object(RemoteList::new("path", Vec::new())));
    ns.insert(
        "MyClass",
        Value::object(
            Class::new("MyClass", |mut args| {
                args.expect_count(1, 1)?;
                let t: f64 = args.take(0, "t")?;
                MyClass::new(t)
            })
            .with_signature("MyClass(t: float) -> MyClass"),
        ),
    );
    ns.insert(
        "map",
        Function::from_async("map", |_cx, mut args| async move {
            args.expect_count(2, 2)?;
            let f = args.take_value(0, "f")?;
            let items: Vec<Value> = args.take(1, "items")?;
            map(f, items).await
        })
        .with_signature("map(f: callable, items: list) -> list")
        .into_value(),
    );
}

/// Calls `f` on each item, in order, and collects the results.
async fn map(f: Value, items: Vec<Value>) -> Result<Value, RemoteError> {
    let mut out = Vec::with_capacity(items.len().min(4096));
    match f {
        Value::Proxy(f) => {
            for item in items {
                out.push(f.invoke((item,)).await?);
            }
        }
        Value::Object(_) => {
            return Err(RemoteError::bad_argument(
                "map needs a callable of the caller's; this one lives on the server",
            ))
        }
        other => {
            return Err(RemoteError::bad_argument(format!(
                "argument 0 (`f`): expected a callable, got {}",
                other.type_name()
            )))
        }
    }
    Ok(Value::List(out))
}

/// A file opened on the server, used through a proxy.
#[derive(Debug)]
pub struct RemoteFile {
    path: String,
    file: Mutex<Option<BufReader<File>>>,
}

impl RemoteFile {
    /// Opens `path` with a Python-style mode: `r`, `w`, `a`, `r+`, `w+`, `a+`.
    pub fn open(path: &str, mode: &str) -> Result<RemoteFile, RemoteError> {
        let mut opts = std::fs::OpenOptions::new();
        match mode.trim_end_matches('b') {
            "r" => opts.read(true),
            "r+" => opts.read(true).write(true),
            "w" => opts.write(true).create(true).truncate(true),
            "w+" => opts.read(true).write(true).create(true).truncate(true),
            "a" => opts.append(true).create(true),
            "a+" => opts.read(true).append(true).create(true),
            other => {
                return Err(RemoteError::bad_argument(format!(
                    "unknown file mode {other:?}"
                )))
            }
        };
        let file = opts
            .open(path)
            .map_err(|e| RemoteError::from(e).context(format!("opening {path:?}")))?;
        Ok(RemoteFile {
            path: path.to_owned(),
            file: Mutex::new(Some(BufReader::new(file))),
        })
    }

    /// Wraps a file the caller opened (the file service, beneath its root).
    pub fn from_file(path: String, file: File) -> RemoteFile {
        RemoteFile {
            path,
            file: Mutex::new(Some(BufReader::new(file))),
        }
    }

    fn with_file<T>(
        &self,
        f: impl FnOnce(&mut BufReader<File>) -> std::io::Result<T>,
    ) -> Result<T, RemoteError> {
        let mut guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let file = guard
            .as_mut()
            .ok_or_else(|| RemoteError::new(ErrorKind::Io, format!("{:?} is closed", self.path)))?;
        f(file).map_err(|e| RemoteError::from(e).context(format!("on {:?}", self.path)))
    }
}

/// The largest read done in one call; read big files in chunks.
const MAX_READ: u64 = 64 * 1024 * 1024;

impl Remote for RemoteFile {
    fn type_name(&self) -> &str {
        "File"
    }

    fn call(self: Arc<Self>, _cx: CallContext, method: &str, mut args: Args) -> Reply {
        let method = method.to_owned();
        Reply::blocking(move || match method.as_str() {
            "read" => {
                let n: Option<i64> = args.take_opt(0, "size")?;
                let limit = match n {
                    Some(n) if n >= 0 => (n as u64).min(MAX_READ),
                    _ => MAX_READ,
                };
                let text = self.with_file(|f| {
                    let mut buf = Vec::new();
                    f.take(limit).read_to_end(&mut buf)?;
                    Ok(buf)
                })?;
                String::from_utf8(text).map(Value::Str).map_err(|_| {
                    RemoteError::new(ErrorKind::Io, "file is not UTF-8 text; use read_bytes")
                })
            }
            "read_bytes" => {
                let n: Option<i64> = args.take_opt(0, "size")?;
                let limit = n
                    .filter(|n| *n >= 0)
                    .map_or(MAX_READ, |n| (n as u64).min(MAX_READ));
                self.with_file(|f| {
                    let mut buf = Vec::new();
                    f.take(limit).read_to_end(&mut buf)?;
                    Ok(Value::Bytes(buf.into()))
                })
            }
            "readline" => self.with_file(|f| {
                let mut line = String::new();
                f.read_line(&mut line)?;
                Ok(Value::Str(line))
            }),
            "write" => {
                let data = args.take_value(0, "data")?;
                let bytes: Vec<u8> = match data {
                    Value::Str(s) => s.into_bytes(),
                    Value::Bytes(b) => b.to_vec(),
                    other => {
                        return Err(RemoteError::bad_argument(format!(
                            "argument 0 (`data`): expected str or bytes, got {}",
                            other.type_name()
                        )))
                    }
                };
                self.with_file(|f| {
                    f.get_mut().write_all(&bytes)?;
                    Ok(Value::from(bytes.len()))
                })
            }
            "seek" => {
                let pos: u64 = args.take(0, "offset")?;
                self.with_file(|f| f.seek(std::io::SeekFrom::Start(pos)).map(Value::from))
            }
            "flush" => self.with_file(|f| f.get_mut().flush().map(|_| Value::Unit)),
            "close" => {
                let file = self.file.lock().unwrap_or_else(|p| p.into_inner()).take();
                drop(file);
                Ok(Value::Unit)
            }
            other => Err(RemoteError::no_such_method("File", other)),
        })
    }

    fn get_attr(self: Arc<Self>, _cx: CallContext, name: &str) -> Reply {
        match name {
            "name" => Reply::ready(self.path.as_str()),
            "closed" => Reply::ready(
                self.file
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .is_none(),
            ),
            _ => Reply::err(RemoteError::no_such_attribute("File", name)),
        }
    }

    fn members(&self) -> Vec<Member> {
        vec![
            Member::method("read", "read(size: int = -1) -> str"),
            Member::method("read_bytes", "read_bytes(size: int = -1) -> bytes"),
            Member::method("readline", "readline() -> str"),
            Member::method("write", "write(data: str | bytes) -> int"),
            Member::method("seek", "seek(offset: int) -> int"),
            Member::method("flush", "flush()"),
            Member::method("close", "close()"),
            Member::attribute("name", "str"),
            Member::attribute("closed", "bool"),
        ]
    }
}

/// A mutable list living on the server (the article's remote `sys.path`).
#[derive(Debug)]
pub struct RemoteList {
    name: String,
    items: Mutex<Vec<Value>>,
}

impl RemoteList {
    /// A list called `name` holding `items`.
    pub fn new(name: impl Into<String>, items: Vec<Value>) -> RemoteList {
        RemoteList {
            name: name.into(),
            items: Mutex::new(items),
        }
    }

    /// A copy of the items.
    pub fn items(&self) -> Vec<Value> {
        self.items.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Remote for RemoteList {
    fn type_name(&self) -> &str {
        "list"
    }

    fn call(self: Arc<Self>, _cx: CallContext, method: &str, mut args: Args) -> Reply {
        let mut items = self.items.lock().unwrap_or_else(|p| p.into_inner());
        let result = (|| match method {
            "append" => {
                args.expect_count(1, 1)?;
                items.push(args.take_value(0, "item")?);
                Ok(Value::Unit)
            }
            "extend" => {
                let more: Vec<Value> = args.take(0, "items")?;
                items.extend(more);
                Ok(Value::Unit)
            }
            "insert" => {
                let at: usize = args.take(0, "index")?;
                let item = args.take_value(1, "item")?;
                let at = at.min(items.len());
                items.insert(at, item);
                Ok(Value::Unit)
            }
            "get" => {
                let at: i64 = args.take(0, "index")?;
                let len = items.len() as i64;
                let idx = if at < 0 { len + at } else { at };
                usize::try_from(idx)
                    .ok()
                    .and_then(|i| items.get(i).cloned())
                    .ok_or_else(|| {
                        RemoteError::bad_argument(format!(
                            "index {at} out of range for a list of {len}"
                        ))
                    })
            }
            "remove" => {
                let item = args.take_value(0, "item")?;
                match items.iter().position(|x| *x == item) {
                    Some(i) => Ok(items.remove(i)),
                    None => Err(RemoteError::bad_argument(format!(
                        "{item:?} is not in the list"
                    ))),
                }
            }
            "pop" => items
                .pop()
                .ok_or_else(|| RemoteError::bad_argument("pop from an empty list")),
            "len" => Ok(Value::from(items.len())),
            "contains" => {
                let item = args.take_value(0, "item")?;
                Ok(Value::Bool(items.contains(&item)))
            }
            "list" => Ok(Value::List(items.clone())),
            "clear" => {
                items.clear();
                Ok(Value::Unit)
            }
            other => Err(RemoteError::no_such_method(&self.name, other)),
        })();
        Reply::Ready(result)
    }

    fn members(&self) -> Vec<Member> {
        vec![
            Member::method("append", "append(item)"),
            Member::method("extend", "extend(items: list)"),
            Member::method("insert", "insert(index: int, item)"),
            Member::method("get", "get(index: int) -> any"),
            Member::method("remove", "remove(item) -> any"),
            Member::method("pop", "pop() -> any"),
            Member::method("len", "len() -> int"),
            Member::method("contains", "contains(item) -> bool"),
            Member::method("list", "list() -> list"),
            Member::method("clear", "clear()"),
        ]
    }
}

/// The article's `MyClass`: `f(n)` waits `t` seconds, then returns `n + 1`;
/// `t` is an attribute the caller may change.
#[derive(Debug)]
pub struct MyClass {
    t: Mutex<f64>,
}

impl MyClass {
    /// A new object with delay `t` seconds.
    pub fn new(t: f64) -> Result<MyClass, RemoteError> {
        check_delay(t)?;
        Ok(MyClass { t: Mutex::new(t) })
    }

    fn delay(&self) -> f64 {
        *self.t.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn check_delay(t: f64) -> Result<(), RemoteError> {
    if !(0.0..=86_400.0).contains(&t) {
        return Err(RemoteError::bad_argument(format!(
            "t must be between 0 and 86400 seconds, got {t}"
        )));
    }
    Ok(())
}

impl Remote for MyClass {
    fn type_name(&self) -> &str {
        "MyClass"
    }

    fn call(self: Arc<Self>, _cx: CallContext, method: &str, mut args: Args) -> Reply {
        match method {
            "f" => {
                let n: i64 = match args.expect_count(1, 1).and_then(|_| args.take(0, "n")) {
                    Ok(n) => n,
                    Err(e) => return Reply::err(e),
                };
                let delay = Duration::from_secs_f64(self.delay());
                // An async sleep: a cancelled call stops here at once.
                Reply::future(async move {
                    tokio::time::sleep(delay).await;
                    n.checked_add(1)
                        .ok_or_else(|| RemoteError::bad_argument(format!("{n} + 1 overflows")))
                })
            }
            other => Reply::err(RemoteError::no_such_method("MyClass", other)),
        }
    }

    fn get_attr(self: Arc<Self>, _cx: CallContext, name: &str) -> Reply {
        match name {
            "t" => Reply::ready(self.delay()),
            _ => Reply::err(RemoteError::no_such_attribute("MyClass", name)),
        }
    }

    fn set_attr(self: Arc<Self>, _cx: CallContext, name: &str, value: Value) -> Reply {
        match name {
            "t" => {
                let Some(t) = value.as_f64() else {
                    return Reply::err(RemoteError::bad_argument(format!(
                        "t must be a number, got {}",
                        value.type_name()
                    )));
                };
                if let Err(e) = check_delay(t) {
                    return Reply::err(e);
                }
                *self.t.lock().unwrap_or_else(|p| p.into_inner()) = t;
                Reply::ready(())
            }
            _ => Reply::err(RemoteError::no_such_attribute("MyClass", name)),
        }
    }

    fn members(&self) -> Vec<Member> {
        vec![
            Member::method("f", "f(n: int) -> int"),
            Member::writable_attribute("t", "float"),
        ]
    }
}
