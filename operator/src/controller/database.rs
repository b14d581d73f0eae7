//! Cells' databases from the operator's side: one admin connection, a role and schema
//! per Cell with `spec.database` (made by `cellbus_control::postgres`), and the Secret
//! `{cell}-db` its pods and apps connect with.
//!
//! The Secret is written only when a password is new: when the role is created, when the
//! Secret is lost (the password it held is gone with it, so the role gets a new one),
//! when `spec.database.rotate` changes (the value is kept on the Secret as an
//! annotation) and when `spec.database.rotation.every` has passed since the time the
//! Secret says it was written. An unchanged Cell's reconcile reads the Secret and writes
//! nothing, and comes back when the next rotation is due.
//!
//! The role's password changes first, then the Secret: a Secret that cannot be written
//! is written with yet another password on the next try, while a role whose change
//! failed would be left behind a Secret that already names the next password. Pods keep
//! the connections they have; a pod opening one in between is refused, reads the Secret
//! again and waits briefly for the new password (`cellbus_runtime::db`).

use std::collections::BTreeMap;
use std::time::Duration;

use cellbus_contracts::resources::{CellSpec, DatabaseSpec, DeletionPolicy};
use cellbus_control::postgres::{self, Admin, Endpoint, Wanted};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::ByteString;
use kube::api::{Api, Patch, PatchParams};

use crate::controller::context::Context;
use crate::state::conditions::{reasons, types, NewCondition, Status};
use crate::state::names::FIELD_MANAGER;
use crate::state::observed::ObservedCell;
use crate::Error;

/// Annotation on the Secret holding the `spec.database.rotate` its password was made for.
pub const ROTATE_ANNOTATION: &str = "cellbus.io/rotate";
/// Annotation on the Secret holding when its password was made (RFC 3339), from which
/// `spec.database.rotation.every` counts.
pub const ROTATED_AT_ANNOTATION: &str = "cellbus.io/rotated-at";
/// Label on the Secret naming its Cell.
pub const CELL_LABEL: &str = "cellbus.io/cell";

/// Where the operator provisions Cells' databases (Supabase or plain PostgreSQL). The
/// Helm chart fills these from the Secret its values name.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct DatabaseArgs {
    /// Admin connection URL (direct, port 5432): `postgres://user:password@host:5432/db`.
    /// Without it, Cells with spec.database report DatabaseReady=False.
    #[arg(
        long = "database-url",
        env = "CELLBUS_DATABASE_URL",
        hide_env_values = true
    )]
    pub url: Option<String>,
    #[command(flatten)]
    pub pooler: cellbus_control::postgres::PoolerArgs,
    /// sslmode written into cells' connection settings.
    #[arg(
        long = "database-sslmode",
        env = "CELLBUS_DATABASE_SSLMODE",
        default_value = "require"
    )]
    pub sslmode: String,
}

/// The Secret of Cell `cell`'s database credentials.
pub fn secret_name(cell: &str) -> String {
    cellbus_contracts::assignment::database_secret_name(cell)
}

/// The admin side, connected on first use and again after the connection drops.
pub struct Databases {
    args: DatabaseArgs,
    admin: tokio::sync::Mutex<Option<Admin>>,
}

impl Databases {
    pub fn new(args: DatabaseArgs) -> Self {
        Self {
            args,
            admin: tokio::sync::Mutex::default(),
        }
    }

    /// No admin database: Cells with `spec.database` say so in their condition.
    pub fn none() -> Self {
        Self::new(DatabaseArgs::default())
    }

    /// The admin connection, made now if there is none or the last one dropped.
    async fn admin(
        &self,
        url: &str,
    ) -> Result<tokio::sync::MutexGuard<'_, Option<Admin>>, postgres::DatabaseError> {
        let mut admin = self.admin.lock().await;
        if admin.as_ref().is_none_or(Admin::is_closed) {
            *admin = Some(Admin::connect(url).await?);
        }
        Ok(admin)
    }

    /// Where cells connect: the admin URL's host, port and database, the pooler if any.
    fn endpoint(
        &self,
        admin_url: &str,
        admin: &postgres::Admin,
    ) -> Result<Endpoint, postgres::DatabaseError> {
        let pooler = self.args.pooler.pooler();
        Endpoint::of_admin(admin_url, admin, Some(&self.args.sslmode), pooler)
    }
}

/// The Secret of `cell` holding `data`, labelled with the Cell and annotated with the
/// rotation it was made for. It is owned by the Cell only when the role goes with the
/// Cell: with `Retain` the Secret outlives it, so apps keep working if the Cell is
/// recreated.
pub fn database_secret(
    cell: &ObservedCell,
    spec: &DatabaseSpec,
    data: BTreeMap<String, String>,
    rotated_at: Timestamp,
) -> Secret {
    let owner = (spec.deletion_policy == DeletionPolicy::Delete).then(|| OwnerReference {
        api_version: cellbus_contracts::resources::API_VERSION.into(),
        kind: "Cell".into(),
        name: cell.name().to_owned(),
        uid: cell.meta.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    });
    Secret {
        metadata: ObjectMeta {
            name: Some(secret_name(cell.name())),
            namespace: Some(cell.namespace().to_owned()),
            labels: Some(BTreeMap::from([(CELL_LABEL.into(), cell.name().into())])),
            annotations: Some(BTreeMap::from([
                (
                    ROTATE_ANNOTATION.into(),
                    spec.rotate.clone().unwrap_or_default(),
                ),
                (ROTATED_AT_ANNOTATION.into(), rotated_at.to_string()),
            ])),
            owner_references: owner.map(|owner| vec![owner]),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        data: Some(
            data.into_iter()
                .map(|(key, value)| (key, ByteString(value.into_bytes())))
                .collect(),
        ),
        ..Secret::default()
    }
}

fn wanted<'a>(cell: &ObservedCell, spec: &'a CellSpec, database: &'a DatabaseSpec) -> Wanted<'a> {
    Wanted {
        role: postgres::role_name(cell.namespace(), cell.name()),
        schema: spec.database_schema().unwrap_or_default(),
        spec: database,
    }
}

/// What a database reconcile came to.
pub struct Reconciled {
    /// DatabaseReady.
    pub condition: NewCondition,
    /// When the next scheduled rotation is due, counted from now.
    pub rotate_in: Option<Duration>,
}

/// Why the password changes now, if it does.
#[derive(Debug, PartialEq, Eq)]
pub enum Rotation {
    /// The role is new or its Secret is gone.
    NoSecret,
    /// `spec.database.rotate` changed.
    Asked,
    /// `spec.database.rotation.every` has passed (or the Secret says no time).
    Scheduled,
}

/// Whether the password of a Cell whose Secret carries `annotations` (`None`: there is no
/// Secret) must change at `now`, and when a scheduled rotation is due otherwise.
pub fn rotation_due(
    spec: &DatabaseSpec,
    annotations: Option<&BTreeMap<String, String>>,
    now: Timestamp,
) -> (Option<Rotation>, Option<Duration>) {
    let period = spec.rotation.as_ref().and_then(|r| r.period());
    let Some(annotations) = annotations else {
        return (Some(Rotation::NoSecret), period);
    };
    let asked = annotations
        .get(ROTATE_ANNOTATION)
        .map_or("", String::as_str);
    if asked != spec.rotate.as_deref().unwrap_or_default() {
        return (Some(Rotation::Asked), period);
    }
    let Some(period) = period else {
        return (None, None);
    };
    let rotated_at = annotations
        .get(ROTATED_AT_ANNOTATION)
        .and_then(|at| at.parse::<Timestamp>().ok());
    let since = rotated_at
        .and_then(|at| now.duration_since(at).try_into().ok())
        .unwrap_or(Duration::MAX);
    match period.checked_sub(since) {
        Some(left) if !left.is_zero() => (None, Some(left)),
        _ => (Some(Rotation::Scheduled), Some(period)),
    }
}

/// Makes the Cell's role, schema and Secret match its spec; the DatabaseReady condition,
/// or an error after which the Cell is retried with backoff.
pub async fn reconcile(
    ctx: &Context,
    cell: &ObservedCell,
    spec: &CellSpec,
    database: &DatabaseSpec,
) -> Result<Reconciled, Error> {
    let Some(admin_url) = &ctx.databases.args.url else {
        return Ok(Reconciled {
            condition: NewCondition::new(
                types::DATABASE_READY,
                Status::False,
                reasons::DATABASE_NOT_CONFIGURED,
                "the operator has no admin database; set CELLBUS_DATABASE_URL (the Helm value database.adminSecret)",
            ),
            rotate_in: None,
        });
    };
    let failed = |source| Error::Database {
        cell: cell.key(),
        source,
    };
    let admin = ctx.databases.admin(admin_url).await.map_err(failed)?;
    let admin = admin.as_ref().expect("connected by Databases::admin");

    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), cell.namespace());
    let name = secret_name(cell.name());
    let existing = secrets.get_opt(&name).await.map_err(|source| Error::Kube {
        action: "read",
        object: format!("Secret {}/{name}", cell.namespace()),
        source,
    })?;
    let now = Timestamp::now();
    let no_annotations = BTreeMap::new();
    let annotations = existing.as_ref().map(|secret| {
        secret
            .metadata
            .annotations
            .as_ref()
            .unwrap_or(&no_annotations)
    });
    let (rotation, rotate_in) = rotation_due(database, annotations, now);
    let wanted = wanted(cell, spec, database);
    let provisioned = postgres::provision(admin, &wanted, rotation.is_some())
        .await
        .map_err(failed)?;
    if let Some(password) = &provisioned.password {
        let endpoint = ctx.databases.endpoint(admin_url, admin).map_err(failed)?;
        let data = postgres::secret_data(&endpoint, &provisioned.role, password);
        let secret = database_secret(cell, database, data, now);
        secrets
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&secret),
            )
            .await
            .map_err(|source| Error::Kube {
                action: "apply",
                object: format!("Secret {}/{name}", cell.namespace()),
                source,
            })?;
        ctx.wrote("Secret", "apply");
        tracing::info!(
            role = provisioned.role,
            secret = name,
            why = ?rotation,
            "database credentials written"
        );
    }
    let schedule = match &database.rotation {
        Some(rotation) => format!("; rotated every {}", rotation.every),
        None => String::new(),
    };
    Ok(Reconciled {
        condition: NewCondition::new(
            types::DATABASE_READY,
            Status::True,
            reasons::DATABASE_READY,
            format!(
                "role {} on schema {} ({:?}); credentials in Secret {name}{schedule}",
                provisioned.role, provisioned.schema, database.access
            ),
        ),
        rotate_in,
    })
}

/// Removes the Cell's role (and schema) as its deletion policy says.
pub async fn cleanup(
    ctx: &Context,
    cell: &ObservedCell,
    spec: &CellSpec,
    database: &DatabaseSpec,
) -> Result<(), Error> {
    if database.deletion_policy != DeletionPolicy::Delete {
        return Ok(());
    }
    let Some(admin_url) = &ctx.databases.args.url else {
        return Ok(());
    };
    let failed = |source| Error::Database {
        cell: cell.key(),
        source,
    };
    let admin = ctx.databases.admin(admin_url).await.map_err(failed)?;
    let admin = admin.as_ref().expect("connected by Databases::admin");
    postgres::deprovision(
        admin,
        &wanted(cell, spec, database),
        true,
        database.drop_schema,
    )
    .await
    .map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(value: serde_json::Value) -> DatabaseSpec {
        serde_json::from_value(value).unwrap()
    }

    fn stamped(rotate: &str, rotated_at: Option<&str>) -> BTreeMap<String, String> {
        let mut annotations = BTreeMap::from([(ROTATE_ANNOTATION.to_owned(), rotate.to_owned())]);
        if let Some(at) = rotated_at {
            annotations.insert(ROTATED_AT_ANNOTATION.to_owned(), at.to_owned());
        }
        annotations
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn a_password_changes_without_a_secret_when_asked_and_when_its_period_has_passed() {
        let now: Timestamp = "2026-12-07T12:00:00Z".parse().unwrap();
        let monthly = spec(serde_json::json!({"rotation": {"every": "720h"}}));
        let never = spec(serde_json::json!({}));
        let asked = spec(serde_json::json!({"rotate": "2", "rotation": {"every": "720h"}}));
        type Case<'a> = (
            &'a DatabaseSpec,
            Option<BTreeMap<String, String>>,
            Option<Rotation>,
            Option<Duration>,
        );
        let cases: [Case; 9] = [
            (&never, None, Some(Rotation::NoSecret), None),
            (&monthly, None, Some(Rotation::NoSecret), Some(720 * HOUR)),
            (&never, Some(stamped("", None)), None, None),
            (
                &asked,
                Some(stamped("1", Some("2026-12-07T11:00:00Z"))),
                Some(Rotation::Asked),
                Some(720 * HOUR),
            ),
            // An hour since the last: due in 719 hours.
            (
                &monthly,
                Some(stamped("", Some("2026-12-07T11:00:00Z"))),
                None,
                Some(719 * HOUR),
            ),
            // Exactly the period, and past it: due now, the next a period later.
            (
                &monthly,
                Some(stamped("", Some("2026-11-07T12:00:00Z"))),
                Some(Rotation::Scheduled),
                Some(720 * HOUR),
            ),
            (
                &monthly,
                Some(stamped("", Some("2025-01-01T00:00:00Z"))),
                Some(Rotation::Scheduled),
                Some(720 * HOUR),
            ),
            // A Secret that says no time, or an unreadable one: rotated now.
            (
                &monthly,
                Some(stamped("", None)),
                Some(Rotation::Scheduled),
                Some(720 * HOUR),
            ),
            (
                &monthly,
                Some(stamped("", Some("last tuesday"))),
                Some(Rotation::Scheduled),
                Some(720 * HOUR),
            ),
        ];
        for (spec, annotations, rotation, rotate_in) in cases {
            assert_eq!(
                rotation_due(spec, annotations.as_ref(), now),
                (rotation, rotate_in),
                "{spec:?} {annotations:?}"
            );
        }
    }
}
