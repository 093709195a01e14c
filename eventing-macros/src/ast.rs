//! What the macros read from the item they are on.

use proc_macro2::TokenStream;
use quote::ToTokens;
use syn::parse::{Parse, ParseStream};
use syn::{Data, DeriveInput, Fields, FnArg, Generics, Ident, ItemFn, Pat, Token, Type};

/// The item an attribute is on: its tokens as written, which are always emitted
/// again unchanged, and the type definition in them, if they are one.
pub(crate) struct Item {
    tokens: TokenStream,
    target: Option<Target>,
    function: Option<ItemFn>,
}

/// A struct, enum or union definition.
pub(crate) struct Target {
    /// The type's name.
    pub(crate) ident: Ident,
    /// Its generic parameters (the macros reject any, but the stand-in names them).
    pub(crate) generics: Generics,
    /// What kind of type it is.
    pub(crate) shape: Shape,
}

/// The kind of a [`Target`], with the keyword's token for spans.
pub(crate) enum Shape {
    /// A struct; `unit` for `struct Name;`.
    Struct { unit: bool },
    /// An enum.
    Enum(Token![enum]),
    /// A union.
    Union(Token![union]),
}

impl Item {
    /// The type definition, or `None` when the item is something else.
    pub(crate) fn target(&self) -> Option<&Target> {
        self.target.as_ref()
    }

    /// The function, when the item is one (`#[event_listener]` on an `async fn`).
    pub(crate) fn function(&self) -> Option<&ItemFn> {
        self.function.as_ref()
    }
}

/// What a parameter of a listener function after the event is.
pub(crate) enum Param<'a> {
    /// `&Context` (`by_ref`) or `Context`.
    Context { by_ref: bool },
    /// `State<T>`, with `T`.
    State(&'a Type),
    /// Anything else (an error).
    Other,
}

/// Classifies the type of a listener function's parameter by the last segment of
/// its path: `Context` / `&Context`, `State<T>`.
pub(crate) fn param(ty: &Type) -> Param<'_> {
    let (ty, by_ref) = match ty {
        Type::Reference(reference) if reference.mutability.is_none() => (&*reference.elem, true),
        other => (other, false),
    };
    let Type::Path(path) = ty else {
        return Param::Other;
    };
    let Some(last) = path.path.segments.last() else {
        return Param::Other;
    };
    match (last.ident.to_string().as_str(), &last.arguments) {
        ("Context", syn::PathArguments::None) => Param::Context { by_ref },
        ("State", syn::PathArguments::AngleBracketed(args)) if !by_ref && args.args.len() == 1 => {
            match args.args.first() {
                Some(syn::GenericArgument::Type(inner)) => Param::State(inner),
                _ => Param::Other,
            }
        }
        _ => Param::Other,
    }
}

/// The typed parameters of a function (a receiver is `None`).
pub(crate) fn typed_inputs(function: &ItemFn) -> Vec<Option<(&Pat, &Type)>> {
    function
        .sig
        .inputs
        .iter()
        .map(|input| match input {
            FnArg::Typed(typed) => Some((&*typed.pat, &*typed.ty)),
            FnArg::Receiver(_) => None,
        })
        .collect()
}

impl Parse for Item {
    /// Never fails: any tokens are an item, a type definition or not.
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let tokens: TokenStream = input.parse()?;
        let target = syn::parse2::<DeriveInput>(tokens.clone())
            .ok()
            .map(Target::from);
        let function = match target {
            Some(_) => None,
            None => syn::parse2::<ItemFn>(tokens.clone()).ok(),
        };
        Ok(Self {
            tokens,
            target,
            function,
        })
    }
}

impl ToTokens for Item {
    fn to_tokens(&self, tokens: &mut TokenStream) {
        self.tokens.to_tokens(tokens);
    }
}

impl From<DeriveInput> for Target {
    fn from(input: DeriveInput) -> Self {
        let shape = match input.data {
            Data::Struct(data) => Shape::Struct {
                unit: matches!(data.fields, Fields::Unit),
            },
            Data::Enum(data) => Shape::Enum(data.enum_token),
            Data::Union(data) => Shape::Union(data.union_token),
        };
        Self {
            ident: input.ident,
            generics: input.generics,
            shape,
        }
    }
}
