//! `script`: the article's `execute('n=2')` / `eval('n+1')`, in an embedded
//! Rhai engine with a scope per connection.
//!
//! The engine is bounded: operations per call, string, array and map sizes,
//! nesting and call depth are capped, and it has no module system (so no
//! file access). A top-level `name = value` creates `name` in the
//! connection's scope when it does not exist yet, as in Python.
//!
//! No script can overflow a stack: a script runs on a thread of its own with
//! a stack sized for the deepest value the size limits allow (every level of
//! nesting counts towards [`MAX_COLLECTION`], which Rhai checks as the script
//! runs), and no value nested deeper than [`MAX_DEPTH`] leaves the script,
//! either as a result or in the connection's scope. A script also stops as
//! soon as its call is cancelled (the caller's cancel, its deadline, or the
//! connection's end).

use std::cell::RefCell;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rhai::{Dynamic, Engine, Scope, AST};
use rrpc_core::{Args, CallContext, ErrorKind, Member, Remote, RemoteError, Reply, Value};

/// Most operations one `execute`/`eval` may run.
pub const MAX_OPERATIONS: u64 = 5_000_000;
/// Largest string a script may build, in bytes.
pub const MAX_STRING: usize = 1 << 20;
/// Largest array or map a script may build.
pub const MAX_COLLECTION: usize = 100_000;
/// Most variables a connection's scope may hold.
pub const MAX_VARIABLES: usize = 10_000;
/// Deepest nesting of lists and maps a script may return or keep in the
/// connection's scope (the depth rrpc's decoder accepts by default).
pub const MAX_DEPTH: usize = 128;
/// Stack of the thread a script runs on. Rhai clones, measures and drops
/// values recursively, and while a script runs the size limits bound the
/// nesting only by [`MAX_COLLECTION`] arrays plus as many maps: a few hundred
/// bytes a level at most, with a good margin. Only the pages used are
/// committed.
const SCRIPT_STACK: usize = 512 << 20;

thread_local! {
    /// Whether the call the script on this thread serves was cancelled: read
    /// by the engine's progress callback.
    static CURRENT_CALL: RefCell<Option<CallContext>> = const { RefCell::new(None) };
}

/// The script service.
pub struct Script {
    engine: Engine,
}

impl std::fmt::Debug for Script {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Script(rhai)")
    }
}

impl Default for Script {
    fn default() -> Self {
        Script::new()
    }
}

/// The scope of one connection: its variables, and the functions its
/// scripts defined (kept for later calls).
#[derive(Default)]
struct ConnScope(Mutex<ScopeState>);

#[derive(Default)]
struct ScopeState {
    vars: Scope<'static>,
    functions: AST,
}

fn script_error(what: &str, err: impl std::fmt::Display) -> RemoteError {
    RemoteError::custom("ScriptError", format!("{what}: {err}"))
}

impl Script {
    /// A bounded engine.
    pub fn new() -> Script {
        let mut engine = Engine::new();
        engine
            .set_max_operations(MAX_OPERATIONS)
            .set_max_string_size(MAX_STRING)
            .set_max_array_size(MAX_COLLECTION)
            .set_max_map_size(MAX_COLLECTION)
            .set_max_expr_depths(64, 32)
            .set_max_call_levels(32)
            .set_max_variables(MAX_VARIABLES);
        engine.on_progress(|_| {
            let cancelled =
                CURRENT_CALL.with(|cx| cx.borrow().as_ref().is_some_and(CallContext::is_cancelled));
            cancelled.then(|| Dynamic::from("the call was cancelled"))
        });
        engine.on_print(|text| tracing::info!(target: "rrpc::script", "print: {text}"));
        engine.on_debug(
            |text, _, pos| tracing::debug!(target: "rrpc::script", "debug {pos}: {text}"),
        );
        Script { engine }
    }

    fn run(&self, cx: &CallContext, method: &str, mut args: Args) -> Result<Value, RemoteError> {
        let state = cx.connection().extension::<ConnScope>();
        let mut state = state.0.lock().unwrap_or_else(|p| p.into_inner());
        let ScopeState {
            vars: scope,
            functions,
        } = &mut *state;
        match method {
            "execute" => {
                args.expect_count(1, 1)?;
                let code: String = args.take(0, "code")?;
                declare_assigned(scope, &code)?;
                let ast = self
                    .engine
                    .compile_with_scope(scope, &code)
                    .map_err(|e| script_error("execute", e))?;
                let ran = self
                    .engine
                    .run_ast_with_scope(scope, &functions.merge(&ast))
                    .map_err(|e| script_error("execute", e));
                // Even a failed script may have left deep values behind.
                drop_too_deep(scope)?;
                ran?;
                *functions = functions.merge(&ast.clone_functions_only());
                Ok(Value::Unit)
            }
            "eval" => {
                args.expect_count(1, 1)?;
                let expr: String = args.take(0, "expr")?;
                let ast = self
                    .engine
                    .compile_with_scope(scope, &expr)
                    .map_err(|e| script_error("eval", e))?;
                let result = self
                    .engine
                    .eval_ast_with_scope::<Dynamic>(scope, &functions.merge(&ast))
                    .map_err(|e| script_error("eval", e));
                drop_too_deep(scope)?;
                to_value(result?, 0)
            }
            "get" => {
                args.expect_count(1, 1)?;
                let name: String = args.take(0, "name")?;
                let value = scope.get_value::<Dynamic>(&name).ok_or_else(|| {
                    RemoteError::new(
                        ErrorKind::NotFound,
                        format!("no variable `{name}` in the scope"),
                    )
                })?;
                to_value(value, 0)
            }
            "set" => {
                args.expect_count(2, 2)?;
                let name: String = args.take(0, "name")?;
                if !is_identifier(&name) {
                    return Err(RemoteError::bad_argument(format!(
                        "`{name}` is not a variable name"
                    )));
                }
                let value = from_value(args.take_value(1, "value")?)?;
                if scope.get(&name).is_none() && scope.len() >= MAX_VARIABLES {
                    return Err(script_error("set", "too many variables in the scope"));
                }
                scope.set_value(name, value);
                Ok(Value::Unit)
            }
            "vars" => Ok(Value::from(
                scope
                    .iter()
                    .map(|(name, _, _)| name.to_owned())
                    .collect::<Vec<_>>(),
            )),
            "reset" => {
                scope.clear();
                *functions = AST::empty();
                Ok(Value::Unit)
            }
            other => Err(RemoteError::no_such_method("script", other)),
        }
    }
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Declares (as `()`) the variables that top-level statements of `code`
/// assign with a plain `name = ...` and that the scope does not hold yet.
fn declare_assigned(scope: &mut Scope<'static>, code: &str) -> Result<(), RemoteError> {
    for statement in code.split([';', '\n']) {
        let text = statement.trim_start();
        let name_len = text
            .char_indices()
            .find(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '_'))
            .map_or(text.len(), |(i, _)| i);
        let (name, rest) = text.split_at(name_len);
        let rest = rest.trim_start();
        let plain_assign =
            rest.starts_with('=') && !rest.starts_with("==") && !rest.starts_with("=>");
        if plain_assign
            && is_identifier(name)
            && !matches!(
                name,
                "let" | "const" | "fn" | "if" | "while" | "for" | "return"
            )
            && scope.get(name).is_none()
        {
            if scope.len() >= MAX_VARIABLES {
                return Err(script_error("execute", "too many variables in the scope"));
            }
            scope.push_dynamic(name.to_owned(), Dynamic::UNIT);
        }
    }
    Ok(())
}

fn too_deep() -> RemoteError {
    script_error(
        "value",
        format!("lists and maps nest deeper than {MAX_DEPTH} levels (script::MAX_DEPTH)"),
    )
}

/// Whether `value` nests lists and maps deeper than `room` more levels.
/// Recurses at most `room` levels.
fn deeper_than(value: &Dynamic, room: usize) -> bool {
    if let Some(items) = value.read_lock::<rhai::Array>() {
        return items.iter().any(|item| {
            (item.is_array() || item.is_map()) && (room == 0 || deeper_than(item, room - 1))
        });
    }
    if let Some(map) = value.read_lock::<rhai::Map>() {
        return map.values().any(|item| {
            (item.is_array() || item.is_map()) && (room == 0 || deeper_than(item, room - 1))
        });
    }
    false
}

/// Removes from the scope (on this thread, with its large stack) every
/// variable nested deeper than [`MAX_DEPTH`]: such a value could neither be
/// returned nor dropped safely elsewhere.
fn drop_too_deep(scope: &mut Scope<'static>) -> Result<(), RemoteError> {
    let deep: Vec<String> = scope
        .iter_raw()
        .filter(|(_, _, value)| deeper_than(value, MAX_DEPTH))
        .map(|(name, _, _)| name.to_owned())
        .collect();
    if deep.is_empty() {
        return Ok(());
    }
    for name in &deep {
        // Replaced, not removed: the scope keeps its shape for the functions.
        scope.set_value(name.as_str(), Dynamic::UNIT);
    }
    Err(script_error(
        "execute",
        format!(
            "variable(s) {} nested lists or maps deeper than {MAX_DEPTH} levels \
             (script::MAX_DEPTH) and were reset to ()",
            deep.join(", ")
        ),
    ))
}

/// A script value as an rrpc value, `depth` levels down.
fn to_value(value: Dynamic, depth: usize) -> Result<Value, RemoteError> {
    if depth > MAX_DEPTH {
        return Err(too_deep());
    }
    if value.is_unit() {
        return Ok(Value::Unit);
    }
    if let Some(b) = value.clone().try_cast::<bool>() {
        return Ok(Value::Bool(b));
    }
    if let Some(i) = value.clone().try_cast::<rhai::INT>() {
        return Ok(Value::Int(i));
    }
    if let Some(f) = value.clone().try_cast::<rhai::FLOAT>() {
        return Ok(Value::Float(f));
    }
    if let Some(c) = value.clone().try_cast::<char>() {
        return Ok(Value::Str(c.to_string()));
    }
    if value.is_string() {
        return Ok(Value::Str(value.into_string().unwrap_or_default()));
    }
    if value.is_blob() {
        return Ok(Value::Bytes(Bytes::from(value.cast::<rhai::Blob>())));
    }
    if value.is_array() {
        let items = value.cast::<rhai::Array>();
        return items
            .into_iter()
            .map(|item| to_value(item, depth + 1))
            .collect::<Result<_, _>>()
            .map(Value::List);
    }
    if value.is_map() {
        let map = value.cast::<rhai::Map>();
        return map
            .into_iter()
            .map(|(k, v)| Ok((Value::Str(k.to_string()), to_value(v, depth + 1)?)))
            .collect::<Result<_, RemoteError>>()
            .map(Value::Map);
    }
    Err(RemoteError::bad_argument(format!(
        "a script value of type {} has no rrpc form",
        value.type_name()
    )))
}

/// An rrpc value as a script value (data only).
fn from_value(value: Value) -> Result<Dynamic, RemoteError> {
    Ok(match value {
        Value::Unit => Dynamic::UNIT,
        Value::Bool(b) => b.into(),
        Value::Int(i) => i.into(),
        Value::UInt(u) => (u as f64).into(),
        Value::Float(f) => f.into(),
        Value::Str(s) => s.into(),
        Value::Bytes(b) => Dynamic::from_blob(b.to_vec()),
        Value::List(items) => items
            .into_iter()
            .map(from_value)
            .collect::<Result<rhai::Array, _>>()?
            .into(),
        Value::Map(pairs) => {
            let mut map = rhai::Map::new();
            for (k, v) in pairs {
                let Value::Str(k) = k else {
                    return Err(RemoteError::bad_argument("script maps need string keys"));
                };
                map.insert(k.into(), from_value(v)?);
            }
            map.into()
        }
        Value::Object(_) | Value::Proxy(_) => {
            return Err(RemoteError::bad_argument(
                "remote objects cannot enter a script scope, only data",
            ))
        }
    })
}

impl Remote for Script {
    fn type_name(&self) -> &str {
        "script"
    }

    fn call(self: Arc<Self>, cx: CallContext, method: &str, args: Args) -> Reply {
        let method = method.to_owned();
        // Scripts are CPU work: the blocking pool keeps the connection responsive.
        Reply::blocking(move || {
            let context = format!("script.{method}");
            // A thread of its own, for its stack (see SCRIPT_STACK); the
            // blocking thread waits for it, so the pool's bounds still hold.
            let worker = std::thread::Builder::new()
                .name("rrpc-script".into())
                .stack_size(SCRIPT_STACK)
                .spawn(move || {
                    CURRENT_CALL.with(|current| *current.borrow_mut() = Some(cx.clone()));
                    let result = self.run(&cx, &method, args);
                    CURRENT_CALL.with(|current| current.borrow_mut().take());
                    result
                })
                .map_err(|e| script_error("cannot start the script thread", e))?;
            let result = worker.join().unwrap_or_else(|_| {
                Err(RemoteError::new(
                    ErrorKind::Internal,
                    "the script thread panicked",
                ))
            });
            result.map_err(|e| e.context(context))
        })
    }

    fn members(&self) -> Vec<Member> {
        vec![
            Member::method("execute", "execute(code: str)"),
            Member::method("eval", "eval(expr: str) -> any"),
            Member::method("get", "get(name: str) -> any"),
            Member::method("set", "set(name: str, value)"),
            Member::method("vars", "vars() -> list[str]"),
            Member::method("reset", "reset()"),
        ]
    }
}
