//! The typed proxy `FooProxy`: one method per trait method returning a
//! `TypedCall`, a `foo_async` form returning a `TypedAsyncResult`, and
//! attribute accessors.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;

use super::{private_at, respan, result_types, signature_text};
use crate::model::{Method, Output, Role, Service};

pub fn generate(service: &Service) -> TokenStream {
    let krate = &service.krate;
    let vis = &service.vis;
    let proxy = service.proxy_ident();
    let object = service.object_ident();
    let trait_ident = &service.ident;
    let type_name = trait_ident.to_string();
    let methods = service.methods.iter().map(|m| method(service, m));
    let members = members(service);
    let checks = wire_checks(service);
    let doc = format!(
        "Typed proxy of a [`{trait_ident}`] object: each method returns a \
         `TypedCall` (`.await` it, or `.wait()` in blocking code). Build it from a \
         dynamic proxy with `From<Proxy>`, or from a local object with \
         [`{object}::into_typed`]."
    );
    let serde = quote!(#krate::typed::__private::serde);
    let result = quote!(::core::result::Result);

    quote! {
        #[doc = #doc]
        #vis struct #proxy {
            handle: #krate::typed::Handle,
        }

        impl #proxy {
            #(#methods)*
        }

        impl #krate::typed::TypedProxy for #proxy {
            const TYPE_NAME: &'static str = #type_name;

            fn from_handle(handle: #krate::typed::Handle) -> Self {
                #proxy { handle }
            }

            fn handle(&self) -> &#krate::typed::Handle {
                &self.handle
            }

            fn declared_members() -> ::std::vec::Vec<#krate::Member> {
                #members
            }
        }

        impl ::core::convert::From<#krate::Proxy> for #proxy {
            fn from(proxy: #krate::Proxy) -> Self {
                <Self as #krate::typed::TypedProxy>::from_proxy(proxy)
            }
        }

        impl ::core::convert::From<#proxy> for #krate::Value {
            fn from(proxy: #proxy) -> Self {
                <#proxy as #krate::typed::TypedProxy>::into_value(proxy)
            }
        }

        impl ::core::clone::Clone for #proxy {
            fn clone(&self) -> Self {
                #proxy { handle: ::core::clone::Clone::clone(&self.handle) }
            }
        }

        impl ::core::fmt::Debug for #proxy {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.debug_tuple(::core::stringify!(#proxy)).field(&self.handle).finish()
            }
        }

        impl #serde::Serialize for #proxy {
            fn serialize<S: #serde::Serializer>(&self, serializer: S) -> #result<S::Ok, S::Error> {
                #serde::Serialize::serialize(&self.handle, serializer)
            }
        }

        impl<'de> #serde::Deserialize<'de> for #proxy {
            fn deserialize<D: #serde::Deserializer<'de>>(deserializer: D) -> #result<Self, D::Error> {
                let handle = <#krate::typed::Handle as #serde::Deserialize>::deserialize(deserializer)?;
                #result::Ok(#proxy { handle })
            }
        }

        #checks
    }
}

fn method(service: &Service, m: &Method) -> TokenStream {
    let krate = &service.krate;
    let ident = &m.ident;
    let docs = &m.docs;
    let (ok, err) = result_types(krate, &m.output);
    let params = m.args.iter().map(|a| {
        let (ident, ty) = (&a.ident, &a.ty);
        quote!(#ident: #ty)
    });
    let names: Vec<_> = m.args.iter().map(|a| &a.ident).collect();
    // Uses of a type are spanned at it, so a type that cannot cross the wire
    // is reported at the type, not at the macro.
    let encoded = m.args.iter().map(|a| {
        let ident = &a.ident;
        let private = private_at(krate, a.ty.span());
        quote_spanned!(a.ty.span()=> #private::encode(&#ident))
    });
    let out_span = output_span(&m.output).unwrap_or_else(|| ident.span());
    match &m.role {
        Role::Method { name } => {
            let async_ident = format_ident!("{}_async", ident);
            let async_doc = format!("`{ident}`, started at once: its result arrives later.");
            let params: Vec<_> = params.collect();
            let at_out = private_at(krate, out_span);
            let call = respan(quote!(#at_out::call(&self.handle, #name, args)), out_span);
            let start = respan(
                quote!(#krate::TypedCall::start(self.#ident(#(#names),*))),
                out_span,
            );
            quote! {
                #(#docs)*
                pub fn #ident(&self, #(#params),*) -> #krate::TypedCall<#ok, #err> {
                    let args = [#(#encoded),*];
                    #call
                }

                #[doc = #async_doc]
                pub fn #async_ident(&self, #(#params),*) -> #krate::TypedAsyncResult<#ok, #err> {
                    #start
                }
            }
        }
        Role::Getter { attr } => {
            let at_out = private_at(krate, out_span);
            let get = respan(quote!(#at_out::get(&self.handle, #attr)), out_span);
            quote! {
                #(#docs)*
                pub fn #ident(&self) -> #krate::TypedCall<#ok, #err> {
                    #get
                }
            }
        }
        Role::Setter { attr } => {
            let value = &names[0];
            let at_value = private_at(krate, m.args[0].ty.span());
            let set = respan(
                quote!(#at_value::set(&self.handle, #attr, &#value)),
                m.args[0].ty.span(),
            );
            quote! {
                #(#docs)*
                pub fn #ident(&self, #(#params),*) -> #krate::TypedCall<(), #err> {
                    #set
                }
            }
        }
    }
}

/// The member listing, from the declarations.
fn members(service: &Service) -> TokenStream {
    let krate = &service.krate;
    let mut entries = Vec::new();
    for m in &service.methods {
        match &m.role {
            Role::Method { name } => {
                let sig = signature_text(m);
                entries.push(quote!(#krate::Member::method(#name, #sig)));
            }
            Role::Getter { attr } => {
                let ty = match &m.output {
                    Output::Unit => String::from("()"),
                    Output::Plain(ty) | Output::ResultAlias(ty) => super::type_text(ty),
                    Output::Result { ok, .. } => super::type_text(ok),
                };
                let ctor = if service.has_setter(attr) {
                    quote!(writable_attribute)
                } else {
                    quote!(attribute)
                };
                entries.push(quote!(#krate::Member::#ctor(#attr, #ty)));
            }
            Role::Setter { attr } if !service.has_getter(attr) => {
                let ty = m
                    .args
                    .first()
                    .map(|a| super::type_text(&a.ty))
                    .unwrap_or_default();
                entries.push(quote!(#krate::Member::writable_attribute(#attr, #ty)));
            }
            Role::Setter { .. } => {}
        }
    }
    quote!(::std::vec![#(#entries),*])
}

/// Compile-time checks, each at its type's span, that every argument and
/// result can cross the wire and every error type is a `ServiceError`.
fn wire_checks(service: &Service) -> TokenStream {
    let krate = &service.krate;
    let mut checks = Vec::new();
    for m in &service.methods {
        for a in &m.args {
            let ty = &a.ty;
            let private = private_at(krate, ty.span());
            checks.push(quote_spanned!(ty.span()=> #private::assert_wire::<#ty>();));
        }
        match &m.output {
            Output::Unit => {}
            Output::Plain(ty) => {
                let private = private_at(krate, ty.span());
                checks.push(quote_spanned!(ty.span()=> #private::assert_wire::<#ty>();));
            }
            Output::Result { ok, err } => {
                let private = private_at(krate, ok.span());
                checks.push(quote_spanned!(ok.span()=> #private::assert_wire::<#ok>();));
                let private = private_at(krate, err.span());
                checks.push(quote_spanned!(err.span()=> #private::assert_service_error::<#err>();));
            }
            Output::ResultAlias(ty) => {
                let private = private_at(krate, ty.span());
                checks.push(quote_spanned!(ty.span()=>
                    #private::assert_wire::<<#ty as #private::ResultParts>::Ok>();
                    #private::assert_service_error::<<#ty as #private::ResultParts>::Err>();
                ));
            }
        }
    }
    quote! {
        const _: () = {
            #[allow(dead_code)]
            fn __rrpc_wire_checks() {
                #(#checks)*
            }
        };
    }
}

/// Where a method's result type is written, if it is.
pub(super) fn output_span(output: &Output) -> Option<proc_macro2::Span> {
    match output {
        Output::Unit => None,
        Output::Plain(ty) | Output::ResultAlias(ty) => Some(ty.span()),
        Output::Result { err, .. } => Some(err.span()),
    }
}
