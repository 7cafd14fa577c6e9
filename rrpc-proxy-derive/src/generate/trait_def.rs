//! The trait as the user wrote it, with `async fn`s returning `Send`
//! futures so that the exported object can run them as tasks.

use proc_macro2::TokenStream;
use quote::{quote, ToTokens};
use syn::spanned::Spanned;
use syn::{ReturnType, TraitItem};

use crate::model::Service;

pub fn generate(service: &Service) -> TokenStream {
    let mut item = service.item.clone();
    for trait_item in &mut item.items {
        let TraitItem::Fn(f) = trait_item else {
            continue;
        };
        let Some(asyncness) = f.sig.asyncness.take() else {
            continue;
        };
        let span = asyncness.span();
        let output = match &f.sig.output {
            ReturnType::Default => quote!(()),
            ReturnType::Type(_, ty) => ty.to_token_stream(),
        };
        f.sig.output = syn::parse_quote_spanned! {span=>
            -> impl ::core::future::Future<Output = #output> + ::core::marker::Send
        };
        if let Some(body) = &f.default {
            let stmts = &body.stmts;
            f.default = Some(syn::parse_quote_spanned! {span=> { async move { #(#stmts)* } } });
        }
    }
    item.to_token_stream()
}
