//! The exported-object adapter `FooObject<T>`: implements `Remote` for any
//! `T: Foo`, decoding arguments with clear errors and running sync methods
//! on the blocking pool and `async fn`s as tasks.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::Ident;

use crate::model::{Method, Output, Role, Service};

/// Names of the generated code's own locals: `mixed_site` so that they never
/// clash with (or capture) the user's argument names.
struct Locals {
    this: Ident,
    args: Ident,
    value: Ident,
    err: Ident,
}

impl Locals {
    fn new() -> Locals {
        let ident = |name: &str| Ident::new(name, Span::mixed_site());
        Locals {
            this: ident("this"),
            args: ident("args"),
            value: ident("value"),
            err: ident("err"),
        }
    }
}

pub fn generate(service: &Service) -> TokenStream {
    let krate = &service.krate;
    let private = quote!(#krate::typed::__private);
    let vis = &service.vis;
    let trait_ident = &service.ident;
    let object = service.object_ident();
    let proxy = service.proxy_ident();
    let type_name = trait_ident.to_string();
    let l = Locals::new();
    let (this, args, value) = (&l.this, &l.args, &l.value);

    let calls = service.methods.iter().filter_map(|m| match &m.role {
        Role::Method { name } => Some(call_arm(service, m, name, &l)),
        _ => None,
    });
    let gets = service.methods.iter().filter_map(|m| match &m.role {
        Role::Getter { attr } => Some(getter_arm(service, m, attr, &l)),
        _ => None,
    });
    let sets = service.methods.iter().filter_map(|m| match &m.role {
        Role::Setter { attr } => Some(setter_arm(service, m, attr, &l)),
        _ => None,
    });
    let read_only = service.methods.iter().filter_map(|m| match &m.role {
        Role::Getter { attr } if !service.has_setter(attr) => Some(quote! {
            #attr => #krate::Reply::err(#private::read_only(#type_name, #attr)),
        }),
        _ => None,
    });
    let doc = format!(
        "Exports any [`{trait_ident}`] implementation as a remote object: put it in a \
         `Namespace` (it converts into a `Value`), or return it from a method as a \
         [`{proxy}`] with [`{object}::into_typed`]."
    );
    let bounds = quote!(#trait_ident + ::core::marker::Send + ::core::marker::Sync + 'static);

    quote! {
        #[doc = #doc]
        #vis struct #object<T> {
            inner: T,
        }

        impl<T> #object<T> {
            /// Wraps an implementation.
            pub fn new(inner: T) -> Self {
                #object { inner }
            }

            /// The implementation inside.
            pub fn get_ref(&self) -> &T {
                &self.inner
            }
        }

        impl<T: #bounds> #object<T> {
            /// A typed proxy to this (local) object, to return from a method
            /// or pass as an argument: the peer receives it by reference.
            pub fn into_typed(self) -> #proxy {
                let handle = #krate::typed::Handle::local(::std::sync::Arc::new(self));
                <#proxy as #krate::typed::TypedProxy>::from_handle(handle)
            }
        }

        impl<T: #bounds> ::core::convert::From<#object<T>> for #proxy {
            fn from(object: #object<T>) -> Self {
                object.into_typed()
            }
        }

        impl<T: #bounds> ::core::convert::From<#object<T>> for #krate::Value {
            fn from(object: #object<T>) -> Self {
                #krate::Value::Object(::std::sync::Arc::new(object))
            }
        }

        impl<T> ::core::fmt::Debug for #object<T> {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.debug_struct(::core::stringify!(#object)).finish_non_exhaustive()
            }
        }

        impl<T: #bounds> #krate::Remote for #object<T> {
            fn type_name(&self) -> &str {
                #type_name
            }

            #[allow(unused_mut)]
            fn call(
                self: ::std::sync::Arc<Self>,
                _cx: #krate::CallContext,
                method: &str,
                mut #args: #krate::Args,
            ) -> #krate::Reply {
                let #this = self;
                match method {
                    #(#calls)*
                    _ => {
                        ::core::mem::drop(#this);
                        #krate::Reply::err(#private::no_such_method(#type_name, method))
                    }
                }
            }

            fn get_attr(
                self: ::std::sync::Arc<Self>,
                _cx: #krate::CallContext,
                name: &str,
            ) -> #krate::Reply {
                let #this = self;
                match name {
                    #(#gets)*
                    _ => {
                        ::core::mem::drop(#this);
                        #krate::Reply::err(#private::no_such_attribute(#type_name, name))
                    }
                }
            }

            fn set_attr(
                self: ::std::sync::Arc<Self>,
                _cx: #krate::CallContext,
                name: &str,
                #value: #krate::Value,
            ) -> #krate::Reply {
                let #this = self;
                match name {
                    #(#sets)*
                    #(#read_only)*
                    _ => {
                        let _ = (#this, #value);
                        #krate::Reply::err(#private::no_such_attribute(#type_name, name))
                    }
                }
            }

            fn members(&self) -> ::std::vec::Vec<#krate::Member> {
                <#proxy as #krate::typed::TypedProxy>::declared_members()
            }
        }
    }
}

/// `"name" => { decode the arguments; run the method }`.
fn call_arm(service: &Service, m: &Method, name: &str, l: &Locals) -> TokenStream {
    let krate = &service.krate;
    let private = quote!(#krate::typed::__private);
    let (args, err) = (&l.args, &l.err);
    let count = m.args.len();
    let names: Vec<_> = m.args.iter().map(|a| &a.ident).collect();
    let takes = m.args.iter().enumerate().map(|(i, a)| {
        let (ty, text) = (&a.ty, a.ident.to_string());
        let private = super::private_at(krate, ty.span());
        quote_spanned!(ty.span()=> #private::take::<#ty>(&mut #args, #i, #text)?)
    });
    let run = run(service, m, l);
    quote! {
        #name => {
            let decoded = (|| {
                #private::expect_count(&#args, #count)?;
                ::core::result::Result::Ok::<_, #krate::RemoteError>((#(#takes,)*))
            })();
            let (#(#names,)*) = match decoded {
                ::core::result::Result::Ok(values) => values,
                ::core::result::Result::Err(#err) => return #krate::Reply::err(#err),
            };
            #run
        }
    }
}

/// `"attr" => run the getter`.
fn getter_arm(service: &Service, m: &Method, attr: &str, l: &Locals) -> TokenStream {
    let run = run(service, m, l);
    quote!(#attr => { #run })
}

/// `"attr" => { decode the value; run the setter }`.
fn setter_arm(service: &Service, m: &Method, attr: &str, l: &Locals) -> TokenStream {
    let krate = &service.krate;
    let (value, err) = (&l.value, &l.err);
    let run = run(service, m, l);
    let Some(arg) = m.args.first() else {
        return TokenStream::new();
    };
    let (ident, ty) = (&arg.ident, &arg.ty);
    let at_ty = super::private_at(krate, ty.span());
    let take_attr = quote!(#at_ty::take_attr);
    quote! {
        #attr => {
            let #ident: #ty = match #take_attr(#value, #attr) {
                ::core::result::Result::Ok(v) => v,
                ::core::result::Result::Err(#err) => return #krate::Reply::err(#err),
            };
            #run
        }
    }
}

/// Runs the method with its decoded arguments (bound to their own names):
/// on the blocking pool, or as a task for an `async fn`.
fn run(service: &Service, m: &Method, l: &Locals) -> TokenStream {
    let krate = &service.krate;
    let trait_ident = &service.ident;
    let this = &l.this;
    let ident = &m.ident;
    let names = m.args.iter().map(|a| &a.ident);
    let invoke = quote!(<T as #trait_ident>::#ident(&#this.inner, #(#names),*));
    let span = super::proxy::output_span(&m.output).unwrap_or_else(|| ident.span());
    let at_out = super::private_at(krate, span);
    let reply = match &m.output {
        Output::Unit | Output::Plain(_) => quote!(#at_out::ok_value),
        Output::Result { .. } | Output::ResultAlias(_) => quote!(#at_out::result_value),
    };
    if m.is_async {
        let reply = super::respan(quote!(#reply(#invoke.await)), span);
        quote!(#krate::Reply::future(async move { #reply }))
    } else {
        let reply = super::respan(quote!(#reply(#invoke)), span);
        quote!(#krate::Reply::blocking(move || #reply))
    }
}
