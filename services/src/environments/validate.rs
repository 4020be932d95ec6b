//! Input rules of environments: settings, expiry, driver settings and update masks. Each rule
//! reports a field violation naming the field, so a client can show every problem at once.

use std::collections::HashMap;
use std::time::Duration;

use platform_api::platform::environments::v1 as pb;

use crate::error::{Error, FieldViolation};
use crate::names;

/// Which steps a driver has besides deploy.
#[derive(Debug, Clone, Copy)]
pub(super) struct StepKinds {
    pub provision: bool,
    pub teardown: bool,
}

impl StepKinds {
    /// The `noop` driver has only a deploy step; a `command` driver has the steps it names.
    pub fn of(driver: &pb::Driver) -> Self {
        match &driver.driver {
            Some(pb::driver::Driver::Command(c)) => StepKinds {
                provision: c.provision.is_some(),
                teardown: c.teardown.is_some(),
            },
            _ => StepKinds {
                provision: false,
                teardown: false,
            },
        }
    }
}

/// The mutable settings every write checks: display name, description, labels, annotations,
/// variables.
pub(super) fn settings(env: &pb::Environment, violations: &mut Vec<FieldViolation>) {
    if env.display_name.chars().count() > 256 {
        violations.push(FieldViolation::new(
            "environment.display_name",
            "at most 256 characters",
        ));
    } else if env.display_name.chars().any(char::is_control) {
        violations.push(FieldViolation::new(
            "environment.display_name",
            "must not contain control characters",
        ));
    }
    names::validate_text(
        "environment.description",
        &env.description,
        2048,
        violations,
    );
    names::validate_labels("environment.labels", &env.labels, violations);
    names::validate_annotations("environment.annotations", &env.annotations, violations);
    variables("environment.variables", &env.variables, 256, violations);
    for key in env.secret_bindings.keys() {
        if env.variables.contains_key(key) {
            violations.push(FieldViolation::new(
                format!("environment.secret_bindings[{}]", names::printable(key)),
                "also set in `variables`",
            ));
        }
    }
}

/// The form of secret bindings: variable names as for `variables`, each value a secret (or a
/// numbered version) of `tenant`. Whether the secrets exist is checked in the write transaction.
pub(super) fn secret_bindings(
    tenant: &str,
    bindings: &HashMap<String, String>,
    violations: &mut Vec<FieldViolation>,
) {
    for key in bindings.keys() {
        if !variable_name_ok(key) || key.starts_with("PLATFORM_") {
            violations.push(FieldViolation::new(
                format!("environment.secret_bindings[{}]", names::printable(key)),
                "names match [A-Za-z_][A-Za-z0-9_]{0,127} and do not start with PLATFORM_",
            ));
        }
    }
    crate::secrets::inject::bindings_validate(tenant, bindings, violations);
}

/// `[A-Za-z_][A-Za-z0-9_]{0,127}`, not `PLATFORM_*`.
fn variable_name_ok(key: &str) -> bool {
    key.len() <= 128
        && key
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn variables(
    field: &str,
    vars: &HashMap<String, String>,
    max_entries: usize,
    violations: &mut Vec<FieldViolation>,
) {
    if vars.len() > max_entries {
        violations.push(FieldViolation::new(
            field,
            format!("at most {max_entries} entries"),
        ));
        return;
    }
    for (key, value) in vars {
        let entry = format!("{field}[{}]", names::printable(key));
        if !variable_name_ok(key) {
            violations.push(FieldViolation::new(
                entry,
                "names match [A-Za-z_][A-Za-z0-9_]{0,127}",
            ));
        } else if key.starts_with("PLATFORM_") {
            violations.push(FieldViolation::new(
                entry,
                "the PLATFORM_ prefix is reserved for the platform's own facts",
            ));
        } else if value.len() > 32 * 1024 || value.contains('\0') {
            violations.push(FieldViolation::new(
                entry,
                "values are at most 32 KiB, without NUL",
            ));
        }
    }
}

fn duration(d: &Option<prost_types::Duration>) -> Option<Result<Duration, ()>> {
    d.as_ref().map(|d| {
        if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
            Err(())
        } else {
            Ok(Duration::new(d.seconds as u64, d.nanos as u32))
        }
    })
}

fn duration_in(
    field: &str,
    d: &Option<prost_types::Duration>,
    min: Duration,
    max: Duration,
    rule: &str,
    violations: &mut Vec<FieldViolation>,
) {
    match duration(d) {
        None => {}
        Some(Ok(d)) if d >= min && d <= max => {}
        Some(_) => violations.push(FieldViolation::new(field, rule)),
    }
}

fn absolute_path(field: &str, path: &str, violations: &mut Vec<FieldViolation>) {
    if !path.is_empty() && (!path.starts_with('/') || path.contains('\0') || path.len() > 4096) {
        violations.push(FieldViolation::new(
            field,
            "an absolute path, at most 4096 bytes, without NUL",
        ));
    }
}

fn step(field: &str, step: &pb::CommandStep, violations: &mut Vec<FieldViolation>) {
    if step.program.is_empty() || step.program.len() > 4096 || step.program.contains('\0') {
        violations.push(FieldViolation::new(
            format!("{field}.program"),
            "required: 1-4096 bytes without NUL",
        ));
    }
    if step.args.len() > 256 {
        violations.push(FieldViolation::new(
            format!("{field}.args"),
            "at most 256 arguments",
        ));
    }
    for (i, arg) in step.args.iter().enumerate() {
        if arg.len() > 32 * 1024 || arg.contains('\0') {
            violations.push(FieldViolation::new(
                format!("{field}.args[{i}]"),
                "at most 32 KiB, without NUL",
            ));
        }
    }
    variables(&format!("{field}.env"), &step.env, 256, violations);
    absolute_path(
        &format!("{field}.working_directory"),
        &step.working_directory,
        violations,
    );
    duration_in(
        &format!("{field}.timeout"),
        &step.timeout,
        Duration::from_secs(1),
        Duration::from_secs(24 * 3600),
        "1 second to 24 hours",
        violations,
    );
}

/// A driver's settings.
pub(super) fn driver(field: &str, driver: &pb::Driver, violations: &mut Vec<FieldViolation>) {
    match &driver.driver {
        None => violations.push(FieldViolation::new(
            field,
            "set exactly one driver: `noop` or `command`",
        )),
        Some(pb::driver::Driver::Noop(noop)) => duration_in(
            &format!("{field}.noop.delay"),
            &noop.delay,
            Duration::ZERO,
            Duration::from_secs(3600),
            "0 to 1 hour",
            violations,
        ),
        Some(pb::driver::Driver::Command(c)) => {
            let field = format!("{field}.command");
            match &c.deploy {
                Some(s) => step(&format!("{field}.deploy"), s, violations),
                None => violations.push(FieldViolation::new(
                    format!("{field}.deploy"),
                    "required: the step run for every deployment",
                )),
            }
            if let Some(s) = &c.provision {
                step(&format!("{field}.provision"), s, violations);
            }
            if let Some(s) = &c.teardown {
                step(&format!("{field}.teardown"), s, violations);
            }
            variables(&format!("{field}.env"), &c.env, 256, violations);
            absolute_path(
                &format!("{field}.working_directory"),
                &c.working_directory,
                violations,
            );
            duration_in(
                &format!("{field}.timeout"),
                &c.timeout,
                Duration::from_secs(1),
                Duration::from_secs(24 * 3600),
                "1 second to 24 hours",
                violations,
            );
            duration_in(
                &format!("{field}.termination_grace_period"),
                &c.termination_grace_period,
                Duration::ZERO,
                Duration::from_secs(300),
                "0 to 5 minutes",
                violations,
            );
        }
    }
}

/// What an expiration in a request comes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expiry {
    /// Expires at this time (microseconds).
    At(i64),
    /// Never expires (no expiration given).
    Never,
    /// The expiration was invalid; a violation says why.
    Unchanged,
}

/// Resolves an expiration (`expire_time` or `ttl`) for an environment of `env_type` at `now`.
/// `prefix` is the message the fields sit in (`environment`, or "" for RenewEnvironment).
pub(super) fn expiry(
    env_type: i32,
    prefix: &str,
    expiration: Option<&pb::environment::Expiration>,
    now: i64,
    max_ttl: Duration,
    violations: &mut Vec<FieldViolation>,
) -> Expiry {
    let field = |name: &str| {
        if prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{prefix}.{name}")
        }
    };
    let max_us = i64::try_from(max_ttl.as_micros()).unwrap_or(i64::MAX);
    let (name, at) = match expiration {
        None => return Expiry::Never,
        Some(pb::environment::Expiration::ExpireTime(t)) => (
            "expire_time",
            t.seconds
                .checked_mul(1_000_000)
                .and_then(|s| s.checked_add(i64::from(t.nanos) / 1000))
                .filter(|_| (0..1_000_000_000).contains(&t.nanos)),
        ),
        Some(pb::environment::Expiration::Ttl(d)) => (
            "ttl",
            match duration(&Some(*d)) {
                Some(Ok(d)) if !d.is_zero() => i64::try_from(d.as_micros())
                    .ok()
                    .and_then(|us| now.checked_add(us)),
                _ => None,
            },
        ),
    };
    if env_type != pb::EnvironmentType::Preview as i32 {
        violations.push(FieldViolation::new(
            field(name),
            "only PREVIEW environments may expire",
        ));
        return Expiry::Unchanged;
    }
    match at {
        Some(at) if at > now && at - now <= max_us => Expiry::At(at),
        _ => {
            violations.push(FieldViolation::new(
                field(name),
                format!(
                    "must be in the future and at most the server's maximum TTL ({}s) away",
                    max_ttl.as_secs()
                ),
            ));
            Expiry::Unchanged
        }
    }
}

/// The fields an UpdateEnvironment mask names.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct UpdateFields {
    pub display_name: bool,
    pub description: bool,
    pub labels: bool,
    pub annotations: bool,
    pub variables: bool,
    pub secret_bindings: bool,
    pub promotes_to: bool,
    pub driver: bool,
    pub expiration: bool,
}

impl UpdateFields {
    /// The changed fields, for the audit record.
    pub fn names(&self) -> Vec<&'static str> {
        [
            (self.display_name, "display_name"),
            (self.description, "description"),
            (self.labels, "labels"),
            (self.annotations, "annotations"),
            (self.variables, "variables"),
            (self.secret_bindings, "secret_bindings"),
            (self.promotes_to, "promotes_to"),
            (self.driver, "driver"),
            (self.expiration, "expire_time"),
        ]
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
        .collect()
    }
}

/// Parses an UpdateEnvironment mask.
pub(super) fn update_mask(paths: &[String]) -> Result<UpdateFields, Error> {
    if paths.is_empty() {
        return Err(Error::invalid_argument(
            "update_mask",
            "required: name the fields to change",
        ));
    }
    let mut f = UpdateFields::default();
    let mut violations = Vec::new();
    for path in paths {
        match path.as_str() {
            "*" => {
                f = UpdateFields {
                    display_name: true,
                    description: true,
                    labels: true,
                    annotations: true,
                    variables: true,
                    secret_bindings: true,
                    promotes_to: true,
                    driver: true,
                    expiration: true,
                };
            }
            "display_name" => f.display_name = true,
            "description" => f.description = true,
            "labels" => f.labels = true,
            "annotations" => f.annotations = true,
            "variables" => f.variables = true,
            "secret_bindings" => f.secret_bindings = true,
            "promotes_to" => f.promotes_to = true,
            "driver" => f.driver = true,
            "expiration" | "expire_time" | "ttl" => f.expiration = true,
            "name" | "uid" | "type" | "state" | "state_message" | "lock" | "provisioning"
            | "teardown" | "creator" | "create_time" | "update_time" | "delete_time"
            | "purge_time" | "etag" => violations.push(FieldViolation::new(
                "update_mask",
                format!("`{path}` is immutable or output only"),
            )),
            other => violations.push(FieldViolation::new(
                "update_mask",
                format!(
                    "`{}` is not a field of Environment",
                    names::printable(other)
                ),
            )),
        }
    }
    if violations.is_empty() {
        Ok(f)
    } else {
        Err(Error::InvalidArgument(violations))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR_US: i64 = 3600 * 1_000_000;

    #[test]
    fn only_previews_expire_and_within_the_maximum() {
        let max = Duration::from_secs(24 * 3600);
        let now = 1_000 * HOUR_US;
        let ttl = |secs| {
            pb::environment::Expiration::Ttl(prost_types::Duration {
                seconds: secs,
                nanos: 0,
            })
        };
        let preview = pb::EnvironmentType::Preview as i32;
        let mut v = Vec::new();
        assert_eq!(
            expiry(preview, "environment", Some(&ttl(3600)), now, max, &mut v),
            Expiry::At(now + HOUR_US)
        );
        assert!(v.is_empty());
        assert_eq!(
            expiry(preview, "environment", None, now, max, &mut v),
            Expiry::Never
        );
        expiry(
            preview,
            "environment",
            Some(&ttl(25 * 3600)),
            now,
            max,
            &mut v,
        );
        expiry(preview, "environment", Some(&ttl(0)), now, max, &mut v);
        expiry(preview, "environment", Some(&ttl(-5)), now, max, &mut v);
        expiry(
            pb::EnvironmentType::Staging as i32,
            "environment",
            Some(&ttl(60)),
            now,
            max,
            &mut v,
        );
        let past = pb::environment::Expiration::ExpireTime(prost_types::Timestamp {
            seconds: 10,
            nanos: 0,
        });
        expiry(preview, "", Some(&past), now, max, &mut v);
        let fields: Vec<&str> = v.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            ["environment.ttl"; 4]
                .into_iter()
                .chain(["expire_time"])
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn variables_reject_reserved_and_malformed_names() {
        let mut v = Vec::new();
        let vars: HashMap<String, String> = [
            ("OK_1", "x"),
            ("PLATFORM_TENANT", "x"),
            ("1BAD", "x"),
            ("BAD-NAME", "x"),
            ("NUL", "a\0b"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        variables("environment.variables", &vars, 256, &mut v);
        let mut fields: Vec<String> = v.into_iter().map(|v| v.field).collect();
        fields.sort();
        assert_eq!(
            fields,
            [
                "environment.variables[1BAD]",
                "environment.variables[BAD-NAME]",
                "environment.variables[NUL]",
                "environment.variables[PLATFORM_TENANT]"
            ]
        );
    }

    #[test]
    fn command_drivers_need_a_deploy_step_and_sane_limits() {
        let mut v = Vec::new();
        let d = pb::Driver {
            driver: Some(pb::driver::Driver::Command(pb::CommandDriver {
                provision: Some(pb::CommandStep {
                    program: String::new(),
                    working_directory: "relative/dir".into(),
                    timeout: Some(prost_types::Duration {
                        seconds: 0,
                        nanos: 0,
                    }),
                    ..Default::default()
                }),
                termination_grace_period: Some(prost_types::Duration {
                    seconds: 301,
                    nanos: 0,
                }),
                ..Default::default()
            })),
        };
        driver("environment.driver", &d, &mut v);
        let fields: Vec<&str> = v.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "environment.driver.command.deploy",
                "environment.driver.command.provision.program",
                "environment.driver.command.provision.working_directory",
                "environment.driver.command.provision.timeout",
                "environment.driver.command.termination_grace_period",
            ]
        );
        assert!(StepKinds::of(&d).provision && !StepKinds::of(&d).teardown);
        let mut v = Vec::new();
        driver("environment.driver", &pb::Driver { driver: None }, &mut v);
        assert_eq!(v.len(), 1);
    }

    #[test]
    fn masks_name_mutable_fields_only() {
        let f = update_mask(&["labels".into(), "ttl".into()]).expect("valid");
        assert_eq!(f.names(), ["labels", "expire_time"]);
        assert!(update_mask(&[]).is_err());
        assert!(update_mask(&["type".into()]).is_err());
        assert!(update_mask(&["nonsense".into()]).is_err());
        assert_eq!(update_mask(&["*".into()]).expect("all").names().len(), 9);
    }
}
