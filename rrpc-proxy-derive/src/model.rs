//! The checked shape of a service trait: what the generators need, and
//! nothing of how it was written.

use syn::{Attribute, Ident, ItemTrait, Path, Type, Visibility};

/// One `#[service]` trait.
pub struct Service {
    /// The trait, cleaned of `#[rrpc]` attributes and with `async fn`s
    /// rewritten to return `Send` futures: emitted as is.
    pub item: ItemTrait,
    /// The trait's visibility, shared by the generated types.
    pub vis: Visibility,
    /// The trait's name (also the type name peers see).
    pub ident: Ident,
    /// Path to the runtime crate (`::rrpc_core` unless told otherwise).
    pub krate: Path,
    /// The methods, attributes getters and setters, in declaration order.
    pub methods: Vec<Method>,
}

/// One trait method.
pub struct Method {
    /// The Rust name.
    pub ident: Ident,
    /// Doc comments, copied onto the proxy's method.
    pub docs: Vec<Attribute>,
    /// What it is on the wire.
    pub role: Role,
    /// Whether it is an `async fn` (run as a task, not on the blocking pool).
    pub is_async: bool,
    /// Its arguments after `&self`.
    pub args: Vec<Arg>,
    /// What it returns.
    pub output: Output,
}

/// What a method is on the wire.
pub enum Role {
    /// A method called by name.
    Method { name: String },
    /// The getter of an attribute.
    Getter { attr: String },
    /// The setter of an attribute.
    Setter { attr: String },
}

/// One argument.
pub struct Arg {
    pub ident: Ident,
    pub ty: Type,
}

/// A method's result type.
pub enum Output {
    /// `()` (nothing written).
    Unit,
    /// A plain type: the call fails only on transport errors.
    Plain(Type),
    /// `Result<T, E>` written out: `E` absorbs transport errors.
    Result { ok: Box<Type>, err: Box<Type> },
    /// Another type named `…Result` (`io::Result<T>`, `CalcResult<T>`): an
    /// alias of `Result`, whose parts are found by type projection.
    ResultAlias(Type),
}

impl Service {
    /// The name of the generated typed proxy.
    pub fn proxy_ident(&self) -> Ident {
        Ident::new(&format!("{}Proxy", self.ident), self.ident.span())
    }

    /// The name of the generated exported-object adapter.
    pub fn object_ident(&self) -> Ident {
        Ident::new(&format!("{}Object", self.ident), self.ident.span())
    }

    /// Whether attribute `attr` has a setter.
    pub fn has_setter(&self, attr: &str) -> bool {
        self.methods
            .iter()
            .any(|m| matches!(&m.role, Role::Setter { attr: a } if a == attr))
    }

    /// Whether attribute `attr` has a getter.
    pub fn has_getter(&self, attr: &str) -> bool {
        self.methods
            .iter()
            .any(|m| matches!(&m.role, Role::Getter { attr: a } if a == attr))
    }
}
