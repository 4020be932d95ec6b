//! Identity as operators set it up: an identity provider's JWKS file (reloaded on SIGHUP), and
//! tokens issued offline with `platformd token issue` from the data dir.

use std::process::Command;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::ecdsa::SigningKey as EcSigningKey;
use p256::pkcs8::EncodePrivateKey;
use platform_api::platform::iam::v1 as iam;
use tonic::Code;

use crate::support::{Backend, ServerProcess, TestDb, platformd_bin, read_bootstrap_token};

const ISSUER: &str = "https://idp.example.test";

struct IdpKey {
    kid: String,
    key: EcSigningKey,
}

impl IdpKey {
    fn new(kid: &str) -> Self {
        IdpKey {
            kid: kid.into(),
            key: EcSigningKey::random(&mut rand::rngs::OsRng),
        }
    }

    fn jwk(&self) -> serde_json::Value {
        let point = self.key.verifying_key().to_encoded_point(false);
        serde_json::json!({
            "kty": "EC", "crv": "P-256", "kid": self.kid, "use": "sig", "alg": "ES256",
            "x": URL_SAFE_NO_PAD.encode(point.x().expect("x")),
            "y": URL_SAFE_NO_PAD.encode(point.y().expect("y")),
        })
    }

    fn token(&self, subject: &str) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let claims = serde_json::json!({ "sub": subject, "iss": ISSUER, "aud": "platform-api", "exp": now + 600, "iat": now });
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        let der = self.key.to_pkcs8_der().expect("der");
        jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_ec_der(der.as_bytes()),
        )
        .expect("sign")
    }
}

fn write_jwks(path: &std::path::Path, keys: &[&IdpKey]) {
    let keys: Vec<_> = keys.iter().map(|k| k.jwk()).collect();
    std::fs::write(
        path,
        serde_json::to_vec(&serde_json::json!({ "keys": keys })).expect("json"),
    )
    .expect("write jwks");
}

async fn caller(
    server: &ServerProcess,
    token: &str,
) -> Result<iam::GetCallerResponse, tonic::Status> {
    let client = server.client().await.with_token(token);
    client
        .iam()
        .get_caller(client.req(iam::GetCallerRequest {}))
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn identity_provider_tokens_are_accepted_and_keys_reload_on_sighup() {
    let db = TestDb::new(Backend::Sqlite).await;
    let jwks = db.data_dir.path().join("idp-jwks.json");
    let first = IdpKey::new("k1");
    write_jwks(&jwks, &[&first]);
    let jwks_arg = format!("--jwks-file={}", jwks.display());
    let server = ServerProcess::start(&db, &[&jwks_arg, &format!("--jwt-issuers={ISSUER}")]).await;

    let me = caller(&server, &first.token("alice"))
        .await
        .expect("IdP token accepted");
    assert_eq!(me.principal, "user:alice");
    assert!(!me.platform_admin);
    // The same claims signed by a key the IdP never published are refused.
    let stranger = IdpKey {
        kid: "k1".into(),
        key: EcSigningKey::random(&mut rand::rngs::OsRng),
    };
    assert_eq!(
        caller(&server, &stranger.token("alice"))
            .await
            .expect_err("wrong key")
            .code(),
        Code::Unauthenticated
    );

    // Key rotation at the IdP: the new key works after SIGHUP, the old one no longer does.
    let second = IdpKey::new("k2");
    let old_token = first.token("alice");
    write_jwks(&jwks, &[&second]);
    server.signal("HUP");
    let mut rotated = false;
    for _ in 0..100 {
        if caller(&server, &second.token("bob")).await.is_ok() {
            rotated = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(rotated, "the new key was not loaded after SIGHUP");
    assert_eq!(
        caller(&server, &old_token)
            .await
            .expect_err("old key removed")
            .code(),
        Code::Unauthenticated
    );
    // No token or key material in the log.
    let log = server.log_lines().join("\n");
    assert!(!log.contains(&old_token), "a token reached the log");
}

#[tokio::test]
async fn operators_issue_tokens_offline_from_the_data_dir() {
    let db = TestDb::new(Backend::Sqlite).await;
    let server = ServerProcess::start(&db, &[]).await;
    let admin_token = read_bootstrap_token(db.data_dir.path());
    let log = server.log_lines().join("\n");
    assert!(
        log.contains("bootstrap-admin.token"),
        "the log says where the admin token is"
    );
    assert!(
        !log.contains(&admin_token),
        "the bootstrap token itself was logged"
    );
    let admin = server.client().await.with_token(&admin_token);
    admin
        .iam()
        .create_tenant(admin.req(iam::CreateTenantRequest {
            tenant_id: "acme".into(),
            ..Default::default()
        }))
        .await
        .expect("tenant");

    let data_dir = db.data_dir.path().display().to_string();
    let database = db.database_arg();
    let issue = |extra: &[&str]| {
        Command::new(platformd_bin())
            .args([
                "token",
                "issue",
                "--data-dir",
                &data_dir,
                "--database",
                &database,
            ])
            .args(extra)
            .output()
            .expect("run platformd token issue")
    };
    let output = issue(&[
        "--subject",
        "ops",
        "--tenant",
        "acme",
        "--role",
        "viewer",
        "--ttl",
        "1h",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let token = String::from_utf8(output.stdout)
        .expect("utf8")
        .trim()
        .to_owned();

    let ops = server.client().await.with_token(&token);
    ops.iam()
        .list_groups(ops.req(iam::ListGroupsRequest {
            parent: "tenants/acme".into(),
            ..Default::default()
        }))
        .await
        .expect("viewer may list");
    let denied = ops
        .iam()
        .create_group(ops.req(iam::CreateGroupRequest {
            parent: "tenants/acme".into(),
            group_id: "g".into(),
            ..Default::default()
        }))
        .await
        .expect_err("viewer may not create");
    assert_eq!(denied.code(), Code::PermissionDenied);

    // Offline tokens are revocable by jti like any platform token.
    let me = ops
        .iam()
        .get_caller(ops.req(iam::GetCallerRequest {}))
        .await
        .expect("caller")
        .into_inner();
    admin
        .iam()
        .revoke_token(admin.req(iam::RevokeTokenRequest {
            jti: me.token_id.clone(),
            reason: "test".into(),
        }))
        .await
        .expect("revoke");
    let refused = ops
        .iam()
        .get_caller(ops.req(iam::GetCallerRequest {}))
        .await
        .expect_err("revoked");
    assert_eq!(refused.code(), Code::Unauthenticated);

    for bad in [
        &["--subject", "x", "--role", "developer"][..],
        &["--subject", "x", "--tenant", "acme", "--role", "root"],
        &["--subject", "", "--ttl", "1h"],
        &["--subject", "x", "--ttl", "forever"],
    ] {
        let output = issue(bad);
        assert_eq!(output.status.code(), Some(2), "{bad:?}");
        assert!(output.stdout.is_empty(), "{bad:?}");
    }
}
