//! Store unit tests that need no database: which URLs skip TLS, and the PostgreSQL
//! statements against the entities they write.

use entity::{command, link};
use sea_orm::{EntityTrait, IdenStatic, Iterable};

use super::{
    commit::{
        HISTORY_COLUMNS, LEASE_COLUMNS, LINK_COLUMNS, OUTBOX_COLUMNS, OUTCOME_COLUMNS, commit_sql,
    },
    loopback_without_sslmode as local,
    pg::Columns,
    receipt::{BEGIN_TAGS, COMMAND_COLUMNS, begin_sql},
};

#[test]
fn tls_is_skipped_only_for_loopback_urls_that_do_not_choose() {
    assert!(local("postgres://u@127.0.0.1:5432/db"));
    assert!(local("postgres://u@localhost/db?application_name=x"));
    assert!(local("postgres://u@[::1]/db"));
    assert!(!local("postgres://u@127.0.0.1/db?sslmode=require"));
    assert!(!local("postgres://u@db.internal/db"));
    assert!(!local("postgres://u@10.0.0.5/db"));
    assert!(!local("not a url"));
}

#[test]
fn the_statements_name_every_column_they_bind() {
    // One parameter per array: the last placeholder is the number of values bound.
    let commit_params = 3 + [
        OUTCOME_COLUMNS,
        LINK_COLUMNS,
        HISTORY_COLUMNS,
        OUTBOX_COLUMNS,
        LEASE_COLUMNS,
    ]
    .iter()
    .map(|c| c.len() + 1)
    .sum::<usize>();
    assert!(commit_sql().contains(&format!("${commit_params}::")));
    assert!(!commit_sql().contains(&format!("${}::", commit_params + 1)));
    let begin_params = 5 + BEGIN_TAGS.len() + COMMAND_COLUMNS.len();
    assert!(begin_sql().contains(&format!("${begin_params}::")));
    assert!(!begin_sql().contains(&format!("${}::", begin_params + 1)));
}

/// Every column a statement binds exists in its table's entity, and the receipt
/// inserts every column of `commands` (a column left out would silently take its
/// default).
#[test]
fn the_column_lists_match_the_entities() {
    fn names<E: EntityTrait>() -> Vec<String> {
        <E::Column as Iterable>::iter()
            .map(|c| c.as_str().to_owned())
            .collect()
    }
    let listed = |columns: Columns| -> Vec<String> {
        columns.iter().map(|(n, _)| (*n).to_owned()).collect()
    };
    assert_eq!(listed(COMMAND_COLUMNS), names::<command::Entity>());
    for (columns, entity) in [
        (LINK_COLUMNS, names::<link::Entity>()),
        (HISTORY_COLUMNS, names::<entity::history::Entity>()),
        (OUTBOX_COLUMNS, names::<entity::outbox::Entity>()),
        (OUTCOME_COLUMNS, names::<command::Entity>()),
    ] {
        for name in listed(columns) {
            assert!(entity.contains(&name), "{name} is not a column");
        }
    }
}
