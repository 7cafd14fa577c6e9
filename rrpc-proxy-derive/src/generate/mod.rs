//! Generate: the code for a checked [`Service`] — the trait, the
//! exported-object adapter and the typed proxy.

mod object;
mod proxy;
mod trait_def;

use proc_macro2::TokenStream;
use quote::{quote, ToTokens};

use crate::model::{Method, Output, Role, Service};

/// All the code for one service.
pub fn service(service: &Service) -> TokenStream {
    let trait_def = trait_def::generate(service);
    let proxy = proxy::generate(service);
    let object = object::generate(service);
    quote! {
        #trait_def
        #proxy
        #object
    }
}

/// `krate::typed::__private`, every token spanned at `span`: a call through
/// it that fails a trait bound is reported at `span` (the user's type), not
/// at the macro.
fn private_at(krate: &syn::Path, span: proc_macro2::Span) -> TokenStream {
    respan(quote!(#krate::typed::__private), span)
}

/// Moves every token of `tokens` to `span`'s location, keeping each token's
/// hygiene (so `mixed_site` locals stay private to the generated code).
fn respan(tokens: TokenStream, span: proc_macro2::Span) -> TokenStream {
    use proc_macro2::{Group, TokenTree};
    tokens
        .into_iter()
        .map(|mut tt| {
            if let TokenTree::Group(g) = &tt {
                let mut group = Group::new(g.delimiter(), respan(g.stream(), span));
                group.set_span(g.span().located_at(span));
                tt = TokenTree::Group(group);
            } else {
                tt.set_span(tt.span().located_at(span));
            }
            tt
        })
        .collect()
}

/// The `Ok` and `Err` types a caller sees for `output`.
fn result_types(krate: &syn::Path, output: &Output) -> (TokenStream, TokenStream) {
    let transport = quote!(#krate::Error);
    match output {
        Output::Unit => (quote!(()), transport),
        Output::Plain(ty) => (ty.to_token_stream(), transport),
        Output::Result { ok, err } => (ok.to_token_stream(), err.to_token_stream()),
        Output::ResultAlias(ty) => (
            quote!(<#ty as #krate::typed::__private::ResultParts>::Ok),
            quote!(<#ty as #krate::typed::__private::ResultParts>::Err),
        ),
    }
}

/// A type as a reader writes it: `Vec<i64>`, not `Vec < i64 >`.
fn type_text(ty: &impl ToTokens) -> String {
    let raw = ty.to_token_stream().to_string();
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ' ' {
            let prev = out.chars().last();
            let next = chars.peek().copied();
            let glue_prev = matches!(prev, Some('<' | ':' | '&' | '(' | '['));
            let glue_next = matches!(next, Some('<' | '>' | ',' | ':' | ')' | ']'));
            if glue_prev || glue_next {
                continue;
            }
        }
        out.push(c);
    }
    out
}

/// The signature listed for a method, e.g. `add(a: i64, b: i64) -> i64`.
fn signature_text(method: &Method) -> String {
    let name = match &method.role {
        Role::Method { name } => name.clone(),
        Role::Getter { attr } | Role::Setter { attr } => attr.clone(),
    };
    let args: Vec<String> = method
        .args
        .iter()
        .map(|a| format!("{}: {}", a.ident, type_text(&a.ty)))
        .collect();
    let ret = match &method.output {
        Output::Unit => String::new(),
        Output::Plain(ty) | Output::ResultAlias(ty) => format!(" -> {}", type_text(ty)),
        Output::Result { ok, err } => {
            format!(" -> Result<{}, {}>", type_text(ok), type_text(err))
        }
    };
    let prefix = if method.is_async { "async " } else { "" };
    format!("{prefix}{name}({}){ret}", args.join(", "))
}
