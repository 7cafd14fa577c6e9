//! Parse: checks a `#[service]` trait and builds its [`model`](crate::model).
//! Every problem is reported at the offending token, all of them at once.

use proc_macro2::TokenStream;
use quote::ToTokens;
use syn::{
    Attribute, FnArg, GenericArgument, ItemTrait, LitStr, Pat, PathArguments, ReturnType,
    Signature, TraitItem, TraitItemFn, Type,
};

use crate::model::{Arg, Method, Output, Role, Service};

/// A trait the macro refuses: the errors, and the trait (cleaned of
/// `#[rrpc]` attributes) so that code using it does not fail twice.
pub struct Failure {
    errors: syn::Error,
    item: Option<Box<ItemTrait>>,
}

impl Failure {
    pub fn into_tokens(self) -> TokenStream {
        let mut out = self.errors.into_compile_error();
        if let Some(item) = self.item {
            item.to_tokens(&mut out);
        }
        out
    }
}

impl From<syn::Error> for Failure {
    fn from(errors: syn::Error) -> Failure {
        Failure { errors, item: None }
    }
}

/// Collects errors so that one compile reports them all.
#[derive(Default)]
struct Errors(Option<syn::Error>);

impl Errors {
    fn push(&mut self, span: impl ToTokens, message: &str) {
        let err = syn::Error::new_spanned(span, message);
        match &mut self.0 {
            Some(all) => all.combine(err),
            None => self.0 = Some(err),
        }
    }

    fn push_error(&mut self, err: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(err),
            None => self.0 = Some(err),
        }
    }
}

/// Parses `#[service(...)]` and the trait under it.
pub fn service(attr: TokenStream, item: TokenStream) -> Result<Service, Failure> {
    let krate = parse_crate_path(attr)?;
    let mut item: ItemTrait = syn::parse2(item)?;
    let mut errors = Errors::default();

    if !item.generics.params.is_empty() || item.generics.where_clause.is_some() {
        errors.push(
            &item.generics,
            "a service trait cannot be generic: its proxy must know every type on the wire",
        );
    }
    if let Some(unsafety) = &item.unsafety {
        errors.push(unsafety, "a service trait cannot be `unsafe`");
    }

    let mut methods = Vec::new();
    for trait_item in &mut item.items {
        match trait_item {
            TraitItem::Fn(f) => {
                let options = take_options(&mut f.attrs, &mut errors);
                if let Some(method) = method(f, options, &mut errors) {
                    methods.push(method);
                }
            }
            other => errors.push(
                &*other,
                "a service trait holds only methods (`fn name(&self, ...)`); \
                 move associated types and constants elsewhere",
            ),
        }
    }
    check_names(&methods, &mut errors);

    match errors.0 {
        Some(errors) => Err(Failure {
            errors,
            item: Some(Box::new(item)),
        }),
        None => Ok(Service {
            vis: item.vis.clone(),
            ident: item.ident.clone(),
            item,
            krate,
            methods,
        }),
    }
}

fn parse_crate_path(attr: TokenStream) -> syn::Result<syn::Path> {
    let mut krate: syn::Path = syn::parse_quote!(::rrpc_core);
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("crate") {
            let lit: LitStr = meta.value()?.parse()?;
            krate = lit.parse()?;
            Ok(())
        } else {
            Err(meta.error("unknown `service` option; expected `crate = \"path::to::rrpc_core\"`"))
        }
    });
    syn::parse::Parser::parse2(parser, attr)?;
    Ok(krate)
}

/// What `#[rrpc(...)]` on a method says.
#[derive(Default)]
struct Options {
    get: bool,
    set: bool,
    name: Option<LitStr>,
}

/// Reads and removes the `#[rrpc(...)]` attributes of a method.
fn take_options(attrs: &mut Vec<Attribute>, errors: &mut Errors) -> Options {
    let mut options = Options::default();
    attrs.retain(|attr| {
        if !attr.path().is_ident("rrpc") {
            return true;
        }
        let result = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("get") {
                options.get = true;
            } else if meta.path.is_ident("set") {
                options.set = true;
            } else if meta.path.is_ident("name") {
                options.name = Some(meta.value()?.parse()?);
            } else {
                return Err(
                    meta.error("unknown `rrpc` option; expected `get`, `set` or `name = \"...\"`")
                );
            }
            Ok(())
        });
        if let Err(e) = result {
            errors.push_error(e);
        }
        false
    });
    options
}

fn method(f: &TraitItemFn, options: Options, errors: &mut Errors) -> Option<Method> {
    let sig = &f.sig;
    check_signature(sig, errors);
    let args = arguments(sig, errors)?;
    let output = output(&sig.output, errors);
    let rust_name = sig.ident.to_string();
    let wire_name = options.name.as_ref().map(LitStr::value);

    let role = match (options.get, options.set) {
        (true, true) => {
            errors.push(
                &sig.ident,
                "a method is either `#[rrpc(get)]` or `#[rrpc(set)]`",
            );
            return None;
        }
        (true, false) => {
            if let Some(first) = args.first() {
                errors.push(&first.ident, "an attribute getter takes only `&self`");
            }
            if matches!(output, Output::Unit) {
                errors.push(
                    &sig.ident,
                    "an attribute getter must return the attribute's type",
                );
            }
            Role::Getter {
                attr: wire_name.unwrap_or(rust_name),
            }
        }
        (false, true) => {
            if args.len() != 1 {
                errors.push(
                    &sig.inputs,
                    "an attribute setter takes `&self` and the new value",
                );
            }
            let attr = match wire_name {
                Some(name) => name,
                None => match rust_name.strip_prefix("set_") {
                    Some(attr) if !attr.is_empty() => attr.to_owned(),
                    _ => {
                        errors.push(
                            &sig.ident,
                            "name the setter `set_<attribute>` or give the attribute with \
                             `#[rrpc(set, name = \"...\")]`",
                        );
                        return None;
                    }
                },
            };
            Role::Setter { attr }
        }
        (false, false) => Role::Method {
            name: wire_name.unwrap_or(rust_name),
        },
    };

    Some(Method {
        ident: sig.ident.clone(),
        docs: f
            .attrs
            .iter()
            .filter(|a| a.path().is_ident("doc"))
            .cloned()
            .collect(),
        role,
        is_async: sig.asyncness.is_some(),
        args,
        output,
    })
}

fn check_signature(sig: &Signature, errors: &mut Errors) {
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        errors.push(
            &sig.generics,
            "a service method cannot be generic: its argument types must be known to cross the wire",
        );
    }
    if let Some(t) = &sig.constness {
        errors.push(t, "a service method cannot be `const`");
    }
    if let Some(t) = &sig.unsafety {
        errors.push(t, "a service method cannot be `unsafe`");
    }
    if let Some(t) = &sig.abi {
        errors.push(t, "a service method cannot have an `extern` ABI");
    }
    if let Some(t) = &sig.variadic {
        errors.push(t, "a service method cannot be variadic");
    }
    match sig.inputs.first() {
        Some(FnArg::Receiver(r)) => {
            if r.colon_token.is_some() {
                errors.push(r, "a service method takes `&self`, not a typed `self`");
            } else if r.reference.is_none() {
                errors.push(
                    r,
                    "a service method takes `&self`: `self` by value would consume the shared remote object",
                );
            } else if r.mutability.is_some() {
                errors.push(
                    r,
                    "a service method takes `&self`, not `&mut self`: a remote object is shared \
                     by every caller, so use interior mutability (a Mutex or atomics)",
                );
            }
        }
        _ => errors.push(
            &sig.ident,
            "a service method takes `&self` first: associated functions cannot be called remotely",
        ),
    }
}

fn arguments(sig: &Signature, errors: &mut Errors) -> Option<Vec<Arg>> {
    let mut args = Vec::new();
    let mut ok = true;
    for input in sig.inputs.iter().skip(1) {
        let FnArg::Typed(pat_type) = input else {
            continue;
        };
        let ident = match &*pat_type.pat {
            Pat::Ident(p) if p.by_ref.is_none() && p.mutability.is_none() && p.subpat.is_none() => {
                Some(p.ident.clone())
            }
            other => {
                errors.push(
                    other,
                    "name this argument with a plain identifier: argument names travel in \
                     member listings and error messages",
                );
                None
            }
        };
        if !check_owned(&pat_type.ty, "argument", errors) {
            ok = false;
        }
        match ident {
            Some(ident) => args.push(Arg {
                ident,
                ty: (*pat_type.ty).clone(),
            }),
            None => ok = false,
        }
    }
    ok.then_some(args)
}

/// Refuses types that cannot be decoded from the wire (references, `impl
/// Trait`); returns whether the type is fine.
fn check_owned(ty: &Type, what: &str, errors: &mut Errors) -> bool {
    match ty {
        Type::Reference(r) => {
            let hint = match &*r.elem {
                Type::Path(p) if p.path.is_ident("str") => " (use `String` instead of `&str`)",
                Type::Slice(_) => " (use a `Vec` instead of a slice)",
                _ => "",
            };
            errors.push(
                ty,
                &format!(
                    "a service {what} must be an owned type: it is decoded from the wire{hint}"
                ),
            );
            false
        }
        Type::ImplTrait(_) => {
            errors.push(
                ty,
                &format!("a service {what} cannot be `impl Trait`: name a concrete type"),
            );
            false
        }
        _ => true,
    }
}

fn output(ret: &ReturnType, errors: &mut Errors) -> Output {
    let ty = match ret {
        ReturnType::Default => return Output::Unit,
        ReturnType::Type(_, ty) => &**ty,
    };
    if !check_owned(ty, "result", errors) {
        return Output::Unit;
    }
    if let Type::Tuple(t) = ty {
        if t.elems.is_empty() {
            return Output::Unit;
        }
    }
    let Type::Path(path) = ty else {
        return Output::Plain(ty.clone());
    };
    let Some(last) = path.path.segments.last() else {
        return Output::Plain(ty.clone());
    };
    // `Result<T, E>`, or an alias such as `io::Result<T>` or `CalcResult<T>`.
    if !last.ident.to_string().ends_with("Result") || path.qself.is_some() {
        return Output::Plain(ty.clone());
    }
    if let PathArguments::AngleBracketed(generics) = &last.arguments {
        let types: Vec<&Type> = generics
            .args
            .iter()
            .filter_map(|a| match a {
                GenericArgument::Type(t) => Some(t),
                _ => None,
            })
            .collect();
        if let [ok, err] = types.as_slice() {
            check_owned(ok, "result", errors);
            return Output::Result {
                ok: Box::new((*ok).clone()),
                err: Box::new((*err).clone()),
            };
        }
    }
    Output::ResultAlias(ty.clone())
}

/// Two methods with one wire name, or a method clashing with the proxy's
/// generated `foo_async`.
fn check_names(methods: &[Method], errors: &mut Errors) {
    let mut seen: Vec<(String, &str)> = Vec::new();
    for m in methods {
        let (key, what) = match &m.role {
            Role::Method { name } => (format!("method {name}"), "method"),
            Role::Getter { attr } => (format!("get {attr}"), "attribute getter"),
            Role::Setter { attr } => (format!("set {attr}"), "attribute setter"),
        };
        if seen.iter().any(|(k, _)| *k == key) {
            errors.push(&m.ident, &format!("this {what} name is already declared"));
        }
        seen.push((key, what));
    }
    for m in methods {
        if let Role::Method { .. } = m.role {
            let async_name = format!("{}_async", m.ident);
            if let Some(clash) = methods.iter().find(|o| o.ident == async_name) {
                errors.push(
                    &clash.ident,
                    &format!(
                        "the typed proxy already generates `{async_name}` (the async-result \
                         form of `{}`); rename this method",
                        m.ident
                    ),
                );
            }
        }
    }
}
