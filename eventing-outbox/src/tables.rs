//! Table names and the migrations that create them.

use std::borrow::Cow;

use sqlx::migrate::{Migration, Migrator};

use crate::error::{Error, Result};

/// The names of the outbox and inbox tables (default `eventing_outbox` and
/// `eventing_inbox`). On PostgreSQL a name may carry a schema (`app.outbox`); the
/// schema must exist.
///
/// The shipped migrations are templates: [`Outbox::migrate`](crate::Outbox::migrate)
/// writes these names into them and records them in sqlx's `_sqlx_migrations` table
/// under versions derived from the names (above 7·10¹⁸, so they do not meet an
/// application's own). An application that also runs `sqlx::migrate!` on the same
/// database sets `ignore_missing` on its migrator.
///
/// ```
/// let tables = eventing_outbox::Tables::new("orders_outbox", "orders_inbox")?;
/// assert_eq!(tables.outbox(), "orders_outbox");
/// assert!(eventing_outbox::Tables::new("x; drop table y", "inbox").is_err());
/// # Ok::<(), eventing_outbox::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tables {
    outbox: String,
    inbox: String,
}

impl Default for Tables {
    fn default() -> Self {
        Self {
            outbox: "eventing_outbox".into(),
            inbox: "eventing_inbox".into(),
        }
    }
}

impl Tables {
    /// Custom names, checked to be plain identifiers (`[A-Za-z_][A-Za-z0-9_]*`, at
    /// most 48 characters, optionally `schema.` in front).
    pub fn new(outbox: impl Into<String>, inbox: impl Into<String>) -> Result<Self> {
        let (outbox, inbox) = (outbox.into(), inbox.into());
        for name in [&outbox, &inbox] {
            if !valid(name) {
                return Err(Error::InvalidTableName { name: name.clone() });
            }
        }
        Ok(Self { outbox, inbox })
    }

    /// The outbox table.
    pub fn outbox(&self) -> &str {
        &self.outbox
    }

    /// The inbox table.
    pub fn inbox(&self) -> &str {
        &self.inbox
    }

    /// The PostgreSQL `NOTIFY` channel the outbox uses (the outbox table's name).
    pub fn channel(&self) -> String {
        self.outbox.replace('.', "_")
    }

    /// `sql` with the template names replaced.
    pub(crate) fn render(&self, sql: &str) -> String {
        sql.replace("__outbox_ix__", &self.outbox.replace('.', "_"))
            .replace("__inbox_ix__", &self.inbox.replace('.', "_"))
            .replace("__outbox__", &self.outbox)
            .replace("__inbox__", &self.inbox)
    }

    /// The shipped `template` migrations rendered for these names.
    pub(crate) fn migrator(&self, template: &Migrator) -> Migrator {
        let key = fnv1a(format!("{}\n{}", self.outbox, self.inbox).as_bytes()) % 1_000_000_000;
        let migrations: Vec<Migration> = template
            .iter()
            .map(|m| {
                Migration::new(
                    7_000_000_000_000_000_000 + (key as i64) * 1_000 + m.version,
                    Cow::Owned(format!(
                        "eventing-outbox {} ({}, {})",
                        m.description, self.outbox, self.inbox
                    )),
                    m.migration_type,
                    Cow::Owned(self.render(&m.sql)),
                    m.no_tx,
                )
            })
            .collect();
        let mut migrator = Migrator {
            migrations: Cow::Owned(migrations),
            ..Migrator::DEFAULT
        };
        migrator.set_ignore_missing(true);
        migrator
    }
}

fn valid(name: &str) -> bool {
    let ident = |part: &str| {
        let mut chars = part.chars();
        matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    name.len() <= 48
        && match name.split_once('.') {
            Some((schema, table)) => ident(schema) && ident(table),
            None => ident(name),
        }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_rendered() {
        assert!(Tables::new("a.b", "c").is_ok());
        assert!(Tables::new("a.b.c", "c").is_err());
        assert!(Tables::new("1a", "c").is_err());
        assert!(Tables::new("a-b", "c").is_err());
        let t = Tables::new("s.out", "inb").unwrap();
        assert_eq!(
            t.render("CREATE INDEX __outbox_ix___x ON __outbox__; __inbox__"),
            "CREATE INDEX s_out_x ON s.out; inb"
        );
        let template = sqlx::migrate!("migrations/sqlite");
        let a = t.migrator(&template);
        let b = Tables::default().migrator(&template);
        assert_ne!(
            a.iter().next().unwrap().version,
            b.iter().next().unwrap().version
        );
        assert!(a.iter().next().unwrap().version > 7_000_000_000_000_000_000);
    }
}
