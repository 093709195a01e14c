//! What the macros read from the item they are on.

use proc_macro2::TokenStream;
use quote::ToTokens;
use syn::parse::{Parse, ParseStream};
use syn::{Data, DeriveInput, Fields, Generics, Ident, Token};

/// The item an attribute is on: its tokens as written, which are always emitted
/// again unchanged, and the type definition in them, if they are one.
pub(crate) struct Item {
    tokens: TokenStream,
    target: Option<Target>,
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
}

impl Parse for Item {
    /// Never fails: any tokens are an item, a type definition or not.
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let tokens: TokenStream = input.parse()?;
        let target = syn::parse2::<DeriveInput>(tokens.clone())
            .ok()
            .map(Target::from);
        Ok(Self { tokens, target })
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
