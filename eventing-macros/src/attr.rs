//! Attribute parsing: the arguments of `#[event(...)]` and
//! `#[event_listener(Event, ...)]`, read into typed settings.
//!
//! This stage checks only the form of each setting (a known key, given once, with
//! a literal of the right kind) and goes on after an error, so that every mistake
//! is reported at once. Whether a value makes sense is checked in `valid`.

use proc_macro2::{Span, TokenStream, TokenTree};
use quote::{ToTokens, quote};
use syn::ext::IdentExt;
use syn::parse::{ParseStream, Parser};
use syn::{Expr, ExprLit, Ident, Lit, LitStr, Meta, Path, Token, Type};

use crate::ctxt::Ctxt;

/// The keys `#[event]` accepts.
pub(crate) const EVENT_KEYS: &[&str] = &["name", "durable", "version", "codec", "crate"];

/// The keys `#[event_listener]` accepts after the event type.
pub(crate) const LISTENER_KEYS: &[&str] = &["name", "per_process", "singleton", "version", "crate"];

/// A value with the key it was given under, for spans.
pub(crate) struct Setting<T> {
    /// The key as written.
    pub(crate) key: Path,
    /// The value.
    pub(crate) value: T,
}

/// Arguments of `#[event(...)]`.
#[derive(Default)]
pub(crate) struct EventArgs {
    /// `name = "..."`: the event's address.
    pub(crate) name: Option<Setting<LitStr>>,
    /// `durable = bool`.
    pub(crate) durable: Option<Setting<bool>>,
    /// `version = "1.2"`, not yet checked to be semver.
    pub(crate) version: Option<Setting<LitStr>>,
    /// `codec = "json"`, not yet checked to be a known codec.
    pub(crate) codec: Option<Setting<LitStr>>,
    /// `crate = "path"`: the runtime crate's path.
    pub(crate) krate: CratePath,
}

/// Arguments of `#[event_listener(Event, ...)]`.
pub(crate) struct ListenerArgs {
    /// The event type; `()` stands in when it is missing (an error is then recorded).
    pub(crate) event: Type,
    /// `name = "..."`: the listener's name.
    pub(crate) name: Option<Setting<LitStr>>,
    /// `per_process = bool`.
    pub(crate) per_process: Option<Setting<bool>>,
    /// `singleton = bool`.
    pub(crate) singleton: Option<Setting<bool>>,
    /// `version = "<2.0"`, not yet checked to be a semver range.
    pub(crate) version: Option<Setting<LitStr>>,
    /// `crate = "path"`: the runtime crate's path.
    pub(crate) krate: CratePath,
}

/// The `crate = "path"` setting.
#[derive(Default)]
pub(crate) enum CratePath {
    /// Not given: `::eventing`.
    #[default]
    Default,
    /// Given as a path.
    Given(Path),
    /// Given, but not as a usable path (an error is recorded).
    Invalid,
}

impl CratePath {
    /// The runtime crate's path, unless the one given was unusable.
    pub(crate) fn tokens(&self) -> Option<TokenStream> {
        match self {
            Self::Default => Some(quote!(::eventing)),
            Self::Given(path) => Some(path.to_token_stream()),
            Self::Invalid => None,
        }
    }
}

impl EventArgs {
    /// Parses the arguments, recording every error in `cx`.
    pub(crate) fn parse(cx: &Ctxt, tokens: TokenStream) -> Self {
        let mut args = Self::default();
        let mut seen = Seen::default();
        parse_all(cx, tokens, |input| {
            parse_settings(cx, input, EVENT_KEYS, |key, value| {
                match key.name.as_str() {
                    "name" => seen.set(cx, &key, &mut args.name, || lit_str(cx, &key, value)),
                    "durable" => {
                        seen.set(cx, &key, &mut args.durable, || lit_bool(cx, &key, value))
                    }
                    "version" => seen.set(cx, &key, &mut args.version, || lit_str(cx, &key, value)),
                    "codec" => seen.set(cx, &key, &mut args.codec, || lit_str(cx, &key, value)),
                    "crate" => {
                        if seen.first(cx, &key) {
                            args.krate = crate_path(cx, &key, value);
                        }
                    }
                    _ => unknown_key(cx, &key.path, EVENT_KEYS),
                }
            });
        });
        args
    }
}

impl ListenerArgs {
    /// Parses the event type and the settings after it, recording every error in `cx`.
    pub(crate) fn parse(cx: &Ctxt, tokens: TokenStream) -> Self {
        let mut args = Self {
            event: Type::Verbatim(quote!(())),
            name: None,
            per_process: None,
            singleton: None,
            version: None,
            krate: CratePath::Default,
        };
        let mut seen = Seen::default();
        parse_all(cx, tokens, |input| {
            if input.is_empty() || (input.peek(Ident::peek_any) && input.peek2(Token![=])) {
                cx.syn_error(syn::Error::new(
                    Span::call_site(),
                    "missing event type: write #[event_listener(MyEvent)] with the event this listener handles",
                ));
            } else {
                match input.parse::<Type>() {
                    Ok(event) => {
                        args.event = event;
                        expect_comma(cx, input);
                    }
                    Err(error) => {
                        cx.syn_error(error);
                        skip_past_comma(input);
                    }
                }
            }
            parse_settings(cx, input, LISTENER_KEYS, |key, value| {
                match key.name.as_str() {
                    "name" => seen.set(cx, &key, &mut args.name, || lit_str(cx, &key, value)),
                    "per_process" => {
                        seen.set(cx, &key, &mut args.per_process, || {
                            lit_bool(cx, &key, value)
                        });
                    }
                    "singleton" => {
                        seen.set(cx, &key, &mut args.singleton, || lit_bool(cx, &key, value));
                    }
                    "version" => seen.set(cx, &key, &mut args.version, || lit_str(cx, &key, value)),
                    "crate" => {
                        if seen.first(cx, &key) {
                            args.krate = crate_path(cx, &key, value);
                        }
                    }
                    _ => unknown_key(cx, &key.path, LISTENER_KEYS),
                }
            });
        });
        args
    }
}

/// A key as written, with its text.
struct Key {
    path: Path,
    name: String,
}

impl ToTokens for Key {
    fn to_tokens(&self, tokens: &mut TokenStream) {
        self.path.to_tokens(tokens);
    }
}

/// The keys given so far, to report a key given twice.
#[derive(Default)]
struct Seen(Vec<String>);

impl Seen {
    /// Whether `key` is new; records a duplicate error otherwise.
    fn first(&mut self, cx: &Ctxt, key: &Key) -> bool {
        if self.0.contains(&key.name) {
            cx.error_spanned_by(key, format!("duplicate key `{}`: give it once", key.name));
            false
        } else {
            self.0.push(key.name.clone());
            true
        }
    }

    /// Reads the value into `slot` the first time `key` is given (a repeated key's
    /// value is not looked at).
    fn set<T>(
        &mut self,
        cx: &Ctxt,
        key: &Key,
        slot: &mut Option<Setting<T>>,
        value: impl FnOnce() -> Option<T>,
    ) {
        if self.first(cx, key) {
            *slot = value().map(|value| Setting {
                key: key.path.clone(),
                value,
            });
        }
    }
}

/// Runs `parse` over all of `tokens`; a leftover syntax error is recorded too.
fn parse_all(cx: &Ctxt, tokens: TokenStream, parse: impl FnOnce(ParseStream<'_>)) {
    let parser = |input: ParseStream<'_>| {
        parse(input);
        Ok(())
    };
    if let Err(error) = parser.parse2(tokens) {
        cx.syn_error(error);
    }
}

/// Parses `key = value, ...` to the end of `input`. A malformed setting is recorded
/// and skipped up to the next comma, so that the settings after it are still read.
fn parse_settings(
    cx: &Ctxt,
    input: ParseStream<'_>,
    keys: &[&str],
    mut on_setting: impl FnMut(Key, &Expr),
) {
    while !input.is_empty() {
        match input.parse::<Meta>() {
            Ok(Meta::NameValue(meta)) => {
                let name = key_name(&meta.path);
                on_setting(
                    Key {
                        path: meta.path,
                        name,
                    },
                    &meta.value,
                );
            }
            Ok(meta) => {
                let path = meta.path();
                let name = key_name(path);
                if keys.contains(&name.as_str()) {
                    cx.error_spanned_by(&meta, format!("`{name}` needs a value: `{name} = ...`"));
                } else {
                    unknown_key(cx, path, keys);
                }
            }
            Err(error) => {
                cx.syn_error(error);
                skip_past_comma(input);
                continue;
            }
        }
        expect_comma(cx, input);
    }
}

/// Unless the input is used up, consumes a comma, or records the error and skips
/// past the next one.
fn expect_comma(cx: &Ctxt, input: ParseStream<'_>) {
    if input.is_empty() {
        return;
    }
    if let Err(error) = input.parse::<Token![,]>() {
        cx.syn_error(error);
        skip_past_comma(input);
    }
}

/// Skips tokens up to and including the next top-level comma.
fn skip_past_comma(input: ParseStream<'_>) {
    // The step itself never fails.
    let _ = input.step(|cursor| {
        let mut rest = *cursor;
        while let Some((tree, next)) = rest.token_tree() {
            rest = next;
            if matches!(&tree, TokenTree::Punct(punct) if punct.as_char() == ',') {
                break;
            }
        }
        Ok(((), rest))
    });
}

/// A key's text: `name`, or `a::b` for a path.
fn key_name(path: &Path) -> String {
    path.segments
        .iter()
        .map(|segment| segment.ident.unraw().to_string())
        .collect::<Vec<_>>()
        .join("::")
}

fn unknown_key(cx: &Ctxt, key: &Path, keys: &[&str]) {
    let valid = keys
        .iter()
        .map(|key| format!("`{key}`"))
        .collect::<Vec<_>>()
        .join(", ");
    cx.error_spanned_by(
        key,
        format!("unknown key `{}`; valid keys are {valid}", key_name(key)),
    );
}

fn lit_str(cx: &Ctxt, key: &Key, value: &Expr) -> Option<LitStr> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Str(lit), ..
        }) => Some(lit.clone()),
        _ => {
            let name = &key.name;
            cx.error_spanned_by(
                value,
                format!("`{name}` must be a string literal: `{name} = \"...\"`"),
            );
            None
        }
    }
}

fn lit_bool(cx: &Ctxt, key: &Key, value: &Expr) -> Option<bool> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Bool(lit),
            ..
        }) => Some(lit.value),
        _ => {
            cx.error_spanned_by(value, format!("`{}` must be `true` or `false`", key.name));
            None
        }
    }
}

/// `crate = "path"`: a string holding a path, such as `"::eventing"`.
fn crate_path(cx: &Ctxt, key: &Key, value: &Expr) -> CratePath {
    let Some(lit) = lit_str(cx, key, value) else {
        return CratePath::Invalid;
    };
    match lit.parse::<Path>() {
        Ok(path) => CratePath::Given(path),
        Err(_) => {
            cx.error_spanned_by(&lit, "`crate` must be a path such as \"::eventing\"");
            CratePath::Invalid
        }
    }
}
