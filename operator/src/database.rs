//! Cells' databases from the operator's side: one admin connection, a role and schema
//! per Cell with `spec.database` (made by `cellbus_control::database`), and the Secret
//! `{cell}-db` its pods and apps connect with.
//!
//! The Secret is written only when a password is new: when the role is created, when the
//! Secret is lost (the password it held is gone with it, so the role gets a new one) and
//! when `spec.database.rotate` changes (the value is kept on the Secret as an
//! annotation). An unchanged Cell's reconcile reads the Secret and writes nothing.

use std::collections::BTreeMap;

use cellbus_contracts::resources::{CellSpec, DatabaseSpec, DeletionPolicy};
use cellbus_control::database::{self, Admin, Endpoint, Wanted};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::ByteString;
use kube::api::{Api, Patch, PatchParams};

use crate::conditions::{reasons, types, NewCondition, Status};
use crate::context::Context;
use crate::names::FIELD_MANAGER;
use crate::observed::ObservedCell;
use crate::run::DatabaseArgs;
use crate::Error;

/// Annotation on the Secret holding the `spec.database.rotate` its password was made for.
pub const ROTATE_ANNOTATION: &str = "cellbus.io/rotate";
/// Label on the Secret naming its Cell.
pub const CELL_LABEL: &str = "cellbus.io/cell";

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
    ) -> Result<tokio::sync::MutexGuard<'_, Option<Admin>>, database::DatabaseError> {
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
        admin: &database::Admin,
    ) -> Result<Endpoint, database::DatabaseError> {
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
            annotations: Some(BTreeMap::from([(
                ROTATE_ANNOTATION.into(),
                spec.rotate.clone().unwrap_or_default(),
            )])),
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
        role: database::role_name(cell.namespace(), cell.name()),
        schema: spec.database_schema().unwrap_or_default(),
        spec: database,
    }
}

/// Makes the Cell's role, schema and Secret match its spec; the DatabaseReady condition,
/// or an error after which the Cell is retried with backoff.
pub async fn reconcile(
    ctx: &Context,
    cell: &ObservedCell,
    spec: &CellSpec,
    database: &DatabaseSpec,
) -> Result<NewCondition, Error> {
    let Some(admin_url) = &ctx.databases.args.url else {
        return Ok(NewCondition::new(
            types::DATABASE_READY,
            Status::False,
            reasons::DATABASE_NOT_CONFIGURED,
            "the operator has no admin database; set CELLBUS_DATABASE_URL (the Helm value database.adminSecret)",
        ));
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
    let wanted_rotation = database.rotate.clone().unwrap_or_default();
    let rotate = match &existing {
        None => true,
        Some(secret) => {
            secret
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(ROTATE_ANNOTATION))
                .cloned()
                .unwrap_or_default()
                != wanted_rotation
        }
    };
    let wanted = wanted(cell, spec, database);
    let provisioned = database::provision(admin, &wanted, rotate)
        .await
        .map_err(failed)?;
    if let Some(password) = &provisioned.password {
        let endpoint = ctx.databases.endpoint(admin_url, admin).map_err(failed)?;
        let data = database::secret_data(&endpoint, &provisioned.role, password);
        let secret = database_secret(cell, database, data);
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
            "database credentials written"
        );
    }
    Ok(NewCondition::new(
        types::DATABASE_READY,
        Status::True,
        reasons::DATABASE_READY,
        format!(
            "role {} on schema {} ({:?}); credentials in Secret {name}",
            provisioned.role, provisioned.schema, database.access
        ),
    ))
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
    database::deprovision(
        admin,
        &wanted(cell, spec, database),
        true,
        database.drop_schema,
    )
    .await
    .map_err(failed)
}
