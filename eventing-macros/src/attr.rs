//! Attribute argument parsing for `#[event]` and `#[event_listener]`.

use proc_macro2::{Span, TokenStream};
use syn::parse::{ParseStream, Parser};
use syn::{Error, LitBool, LitStr, Path, Token, Type};

/// Collects every error instead of stopping at the first, as serde's `Ctxt` does.
#[derive(Default)]
pub(crate) struct Errors(Option<Error>);

impl Errors {
    pub(crate) fn push(&mut self, error: Error) {
        match &mut self.0 {
            Some(existing) => existing.combine(error),
            None => self.0 = Some(error),
        }
    }

    pub(crate) fn into_result(self) -> Result<(), Error> {
        match self.0 {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

/// One `key = value` setting, remembered with its span for duplicate reports.
struct Setting<T> {
    value: Option<(T, Span)>,
}

impl<T> Default for Setting<T> {
    fn default() -> Self {
        Self { value: None }
    }
}

impl<T> Setting<T> {
    fn set(&mut self, key: &str, value: T, span: Span, errors: &mut Errors) {
        if self.value.is_some() {
            errors.push(Error::new(
                span,
                format!("duplicate key `{key}`: give it once"),
            ));
        } else {
            self.value = Some((value, span));
        }
    }

    fn get(self) -> Option<T> {
        self.value.map(|(value, _)| value)
    }
}

const EVENT_KEYS: &str = "`name`, `durable`, `version`, `codec`, `crate`";
const LISTENER_KEYS: &str = "`name`, `per_process`, `singleton`, `version`, `crate`";

/// An event version: semver, where `1.2` means `1.2.0`.
pub(crate) fn normalize_version(text: &str) -> Option<String> {
    let parts = text.split('.').count();
    let full = match parts {
        1 => format!("{text}.0.0"),
        2 => format!("{text}.0"),
        _ => text.to_string(),
    };
    semver::Version::parse(&full).ok().map(|v| v.to_string())
}

/// Arguments of `#[event(...)]`.
pub(crate) struct EventArgs {
    pub(crate) name: Option<LitStr>,
    pub(crate) durable: bool,
    pub(crate) version: Option<String>,
    pub(crate) codec: Option<String>,
    pub(crate) krate: Option<Path>,
}

/// Arguments of `#[event_listener(Event, ...)]`.
pub(crate) struct ListenerArgs {
    pub(crate) event: Type,
    pub(crate) name: Option<LitStr>,
    pub(crate) per_process: bool,
    pub(crate) singleton: bool,
    pub(crate) version: Option<String>,
    pub(crate) krate: Option<Path>,
}

fn parse_crate_path(lit: &LitStr) -> syn::Result<Path> {
    lit.parse::<Path>()
        .map_err(|_| Error::new_spanned(lit, "`crate` must be a path such as \"::eventing\""))
}

fn check_name(lit: &LitStr, what: &str, errors: &mut Errors) {
    let value = lit.value();
    if value.trim().is_empty() {
        errors.push(Error::new_spanned(
            lit,
            format!("{what} name must not be empty"),
        ));
    } else if value.contains(char::is_whitespace) {
        errors.push(Error::new_spanned(
            lit,
            format!("{what} name must not contain white space"),
        ));
    }
}

/// Parses the `key = value, ...` list shared by both attributes.
fn parse_settings(
    input: ParseStream<'_>,
    valid: &str,
    errors: &mut Errors,
    mut on_key: impl FnMut(&syn::Ident, ParseStream<'_>, &mut Errors) -> syn::Result<bool>,
) -> syn::Result<()> {
    while !input.is_empty() {
        let key: syn::Ident = input.call(syn::ext::IdentExt::parse_any)?;
        input.parse::<Token![=]>()?;
        if !on_key(&key, input, errors)? {
            // Skip the value so later keys are still checked.
            let _: syn::Expr = input.parse()?;
            errors.push(Error::new_spanned(
                &key,
                format!("unknown key `{key}`; valid keys are {valid}"),
            ));
        }
        if input.is_empty() {
            break;
        }
        input.parse::<Token![,]>()?;
    }
    Ok(())
}

impl EventArgs {
    pub(crate) fn parse(tokens: TokenStream, errors: &mut Errors) -> syn::Result<Self> {
        let mut name = Setting::<LitStr>::default();
        let mut durable = Setting::<bool>::default();
        let mut version = Setting::<String>::default();
        let mut codec = Setting::<String>::default();
        let mut krate = Setting::<Path>::default();
        let parser = |input: ParseStream<'_>| {
            parse_settings(input, EVENT_KEYS, errors, |key, input, errors| {
                let span = key.span();
                match key.to_string().as_str() {
                    "name" => {
                        let lit: LitStr = input.parse()?;
                        check_name(&lit, "event", errors);
                        name.set("name", lit, span, errors);
                    }
                    "durable" => {
                        let lit: LitBool = input.parse()?;
                        durable.set("durable", lit.value, span, errors);
                    }
                    "version" => {
                        let lit: LitStr = input.parse()?;
                        match normalize_version(&lit.value()) {
                            Some(v) => version.set("version", v, span, errors),
                            None => errors.push(Error::new_spanned(
                                &lit,
                                "`version` must be a semantic version such as \"1.2\" or \"1.2.3\"",
                            )),
                        }
                    }
                    "codec" => {
                        let lit: LitStr = input.parse()?;
                        match lit.value().as_str() {
                            "json" | "msgpack" | "cbor" => codec.set("codec", lit.value(), span, errors),
                            other => errors.push(Error::new_spanned(
                                &lit,
                                format!("unknown codec `{other}`; valid codecs are \"json\", \"msgpack\", \"cbor\""),
                            )),
                        }
                    }
                    "crate" => {
                        let lit: LitStr = input.parse()?;
                        krate.set("crate", parse_crate_path(&lit)?, span, errors);
                    }
                    _ => return Ok(false),
                }
                Ok(true)
            })
        };
        parser.parse2(tokens)?;
        Ok(Self {
            name: name.get(),
            durable: durable.get().unwrap_or(false),
            version: version.get(),
            codec: codec.get(),
            krate: krate.get(),
        })
    }
}

impl ListenerArgs {
    pub(crate) fn parse(tokens: TokenStream, errors: &mut Errors) -> syn::Result<Self> {
        let mut name = Setting::<LitStr>::default();
        let mut per_process = Setting::<bool>::default();
        let mut singleton = Setting::<(bool, Span)>::default();
        let mut version = Setting::<String>::default();
        let mut krate = Setting::<Path>::default();
        let parser = |input: ParseStream<'_>| {
            if input.is_empty() {
                return Err(input.error(
                    "missing event type: write #[event_listener(MyEvent)] with the event this listener handles",
                ));
            }
            let event: Type = input.parse()?;
            if !input.is_empty() {
                input.parse::<Token![,]>()?;
            }
            parse_settings(input, LISTENER_KEYS, errors, |key, input, errors| {
                let span = key.span();
                match key.to_string().as_str() {
                    "name" => {
                        let lit: LitStr = input.parse()?;
                        check_name(&lit, "listener", errors);
                        name.set("name", lit, span, errors);
                    }
                    "per_process" => {
                        let lit: LitBool = input.parse()?;
                        per_process.set("per_process", lit.value, span, errors);
                    }
                    "singleton" => {
                        let lit: LitBool = input.parse()?;
                        singleton.set("singleton", (lit.value, span), span, errors);
                    }
                    "version" => {
                        let lit: LitStr = input.parse()?;
                        match semver::VersionReq::parse(&lit.value()) {
                            Ok(_) => version.set("version", lit.value(), span, errors),
                            Err(error) => errors.push(Error::new_spanned(
                                &lit,
                                format!("`version` must be a semver range such as \"<2.0\" or \"^1.2\": {error}"),
                            )),
                        }
                    }
                    "crate" => {
                        let lit: LitStr = input.parse()?;
                        krate.set("crate", parse_crate_path(&lit)?, span, errors);
                    }
                    _ => return Ok(false),
                }
                Ok(true)
            })?;
            Ok(event)
        };
        let event = parser.parse2(tokens)?;
        let per_process = per_process.get().unwrap_or(false);
        let singleton = match singleton.get() {
            Some((true, span)) if per_process => {
                errors.push(Error::new(
                    span,
                    "a listener is either `per_process` (every server gets every event) or `singleton` (one handler among all listeners), not both",
                ));
                false
            }
            Some((value, _)) => value,
            None => false,
        };
        Ok(Self {
            event,
            name: name.get(),
            per_process,
            singleton,
            version: version.get(),
            krate: krate.get(),
        })
    }
}
