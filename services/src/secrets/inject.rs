//! Secrets bound to environments (`Environment.secret_bindings`) and injected into the driver
//! steps that run there.
//!
//! Three moments: when a binding is set, it is checked (same tenant, the secret exists and is
//! tenant-wide or scoped to this environment, and the caller may read its values — the driver
//! will); when a deployment's first attempt starts, each binding is resolved to one concrete
//! ENABLED version and the versions are recorded in the deployment's snapshot (a rollback copies
//! its target's snapshot, so it gets the same versions), each resolution audited as an access by
//! the platform; when the step runs, those versions are opened and handed to the driver as
//! environment variables, and their values masked in its log. Provision and teardown steps
//! resolve and open at the moment they run.

use std::collections::{BTreeMap, HashMap};

use platform_api::platform::deployments::v1 as dpb;
use zeroize::Zeroizing;

use super::{
    ENABLED, Keyring, VersionRef, parse_version_name, secret_load, secret_name, state_word,
    version_find, version_name, version_open,
};
use crate::audit::{AuditLog, AuditRecord, Outcome};
use crate::authz::Gate;
use crate::context::CallContext;
use crate::error::{Error, FieldViolation};
use crate::names::{self, parse_child_name};
use crate::store::{Store, WriteTx};

const ACCESS_PERMISSION: &str = "secrets.versions.access";

/// What a binding names: a secret (its latest ENABLED version) or one pinned version.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    tenant: String,
    secret: String,
    pinned: Option<i64>,
}

fn parse_target(value: &str) -> Option<Target> {
    if let Ok((tenant, secret)) = parse_child_name("", value, "secrets") {
        return Some(Target {
            tenant,
            secret,
            pinned: None,
        });
    }
    match parse_version_name("", value) {
        Ok((tenant, secret, VersionRef::Number(n))) => Some(Target {
            tenant,
            secret,
            pinned: Some(n),
        }),
        _ => None,
    }
}

/// Checks the form of every binding (no database needed): each value a secret or a numbered
/// version of `tenant`.
pub fn bindings_validate(
    tenant: &str,
    bindings: &HashMap<String, String>,
    violations: &mut Vec<FieldViolation>,
) {
    if bindings.len() > 256 {
        violations.push(FieldViolation::new(
            "environment.secret_bindings",
            "at most 256 entries",
        ));
        return;
    }
    for (variable, value) in bindings {
        let field = format!(
            "environment.secret_bindings[{}]",
            names::printable(variable)
        );
        match parse_target(value) {
            None => violations.push(FieldViolation::new(
                field,
                "must be `tenants/{tenant}/secrets/{secret}` or `.../versions/{number}`",
            )),
            Some(t) if t.tenant != tenant => violations.push(FieldViolation::new(
                field,
                "must be a secret of the environment's tenant",
            )),
            Some(_) => {}
        }
    }
}

/// Checks bindings against the store: each secret exists and may be injected into `env_id`, and
/// the caller holds `secrets.versions.access` on every secret bound anew (entries of `previous`
/// left as they were need nothing more).
pub async fn bindings_check(
    tx: &mut WriteTx,
    gate: &Gate,
    ctx: &CallContext,
    env_id: &str,
    bindings: &HashMap<String, String>,
    previous: &HashMap<String, String>,
) -> Result<(), Error> {
    let mut violations = Vec::new();
    let mut denied = Vec::new();
    for (variable, value) in bindings.iter().collect::<BTreeMap<_, _>>() {
        let field = format!(
            "environment.secret_bindings[{}]",
            names::printable(variable)
        );
        let Some(target) = parse_target(value) else {
            violations.push(FieldViolation::new(field, "not a secret name"));
            continue;
        };
        let name = secret_name(&target.tenant, &target.secret);
        match secret_load(&mut **tx, &target.tenant, &target.secret).await? {
            None => violations.push(FieldViolation::new(
                field,
                format!("secret {name} does not exist"),
            )),
            Some(secret)
                if !secret.body.environment.is_empty()
                    && secret.body.environment
                        != format!("tenants/{}/environments/{env_id}", target.tenant) =>
            {
                violations.push(FieldViolation::new(
                    field,
                    format!("secret {name} is scoped to another environment"),
                ));
            }
            Some(_) => {}
        }
        if previous.get(variable.as_str()) != Some(value)
            && !gate.allows(ctx, &name, ACCESS_PERMISSION)
        {
            denied.push(name);
        }
    }
    if !violations.is_empty() {
        return Err(Error::InvalidArgument(violations));
    }
    if !denied.is_empty() {
        return Err(Error::PermissionDenied {
            message: format!(
                "{} lacks `{ACCESS_PERMISSION}` on {}, needed to bind it (the driver reads its value)",
                ctx.principal,
                denied.join(", ")
            ),
        });
    }
    Ok(())
}

/// Resolves an environment's bindings to concrete versions, ordered by variable name, and audits
/// each as an access by the platform for `on_behalf` (a deployment or environment name). `Err`
/// is the state message of the step that cannot start ("secret binding X: …").
pub async fn bindings_resolve(
    tx: &mut WriteTx,
    audit: &AuditLog,
    tenant: &str,
    env_id: &str,
    bindings: &HashMap<String, String>,
    method: &str,
    on_behalf: &str,
) -> Result<Result<Vec<dpb::SecretInput>, String>, Error> {
    let mut inputs = Vec::new();
    for (variable, value) in bindings.iter().collect::<BTreeMap<_, _>>() {
        let fail = |why: String| Ok(Err(format!("secret binding {variable}: {why}")));
        let Some(target) = parse_target(value).filter(|t| t.tenant == tenant) else {
            return fail(format!(
                "`{}` is not a secret of this tenant",
                names::printable(value)
            ));
        };
        let name = secret_name(&target.tenant, &target.secret);
        let Some(secret) = secret_load(&mut **tx, tenant, &target.secret).await? else {
            return fail(format!("secret {name} does not exist"));
        };
        if !secret.body.environment.is_empty()
            && secret.body.environment != format!("tenants/{tenant}/environments/{env_id}")
        {
            return fail(format!("secret {name} is scoped to another environment"));
        }
        let version = match target.pinned {
            Some(n) => VersionRef::Number(n),
            None => VersionRef::Latest,
        };
        let Some(found) = version_find(&mut **tx, tenant, &target.secret, version).await? else {
            return fail(match version {
                VersionRef::Latest => format!("secret {name} has no enabled version"),
                VersionRef::Number(n) => {
                    format!("{} does not exist", version_name(tenant, &target.secret, n))
                }
            });
        };
        if i64::from(found.state) != ENABLED {
            return fail(format!("{} is {}", found.name, state_word(found.state)));
        }
        let ctx = CallContext::system(method, ACCESS_PERMISSION, Some(tenant), &found.name);
        let mut record = AuditRecord::of_call(&ctx, Outcome::Allowed, tonic::Code::Ok, &[]);
        record.request_id = on_behalf.to_owned();
        audit.append(tx, &record).await?;
        inputs.push(dpb::SecretInput {
            variable: variable.clone(),
            secret_version: found.name,
        });
    }
    Ok(Ok(inputs))
}

/// A secret's value as an environment variable, masked in logs.
pub struct Injected {
    pub variable: String,
    pub value: Zeroizing<String>,
}

impl std::fmt::Debug for Injected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Injected({}=***)", self.variable)
    }
}

/// Opens the recorded versions for a step. `Err` is the state message of a step that cannot run
/// ("secret binding X: …"), never a value.
pub async fn inputs_open(
    store: &Store,
    keyring: &Keyring,
    tenant: &str,
    inputs: &[dpb::SecretInput],
) -> Result<Vec<Injected>, String> {
    let mut out = Vec::new();
    for input in inputs {
        let fail = |why: String| format!("secret binding {}: {why}", input.variable);
        let (t, secret, VersionRef::Number(n)) = parse_version_name("", &input.secret_version)
            .map_err(|_| fail("not a numbered version".into()))?
        else {
            return Err(fail("not a numbered version".into()));
        };
        if t != tenant {
            return Err(fail("not a secret of this tenant".into()));
        }
        let bytes = version_open(store, keyring, &t, &secret, n)
            .await
            .map_err(|e| fail(client_message(&e)))?;
        let text = String::from_utf8(bytes.to_vec()).map_err(|_| {
            fail(format!(
                "{} is not UTF-8 text, so it cannot be an environment variable",
                input.secret_version
            ))
        })?;
        let value = Zeroizing::new(text);
        if value.contains('\0') {
            return Err(fail(format!(
                "{} contains a NUL byte, so it cannot be an environment variable",
                input.secret_version
            )));
        }
        out.push(Injected {
            variable: input.variable.clone(),
            value,
        });
    }
    Ok(out)
}

/// The message of an error as a client may see it (internal details stay in the log).
fn client_message(err: &Error) -> String {
    match err {
        Error::Internal { internal_message } => {
            tracing::error!(error = %internal_message, "opening an injected secret");
            "internal error while reading it".into()
        }
        other => other.to_string(),
    }
}
