//! Hostile input, on SQLite and PostgreSQL: for every unary RPC of the contract and every string,
//! bytes and integer field of its request (and of the messages directly inside it), a request
//! holding one hostile value — empty, control characters, path traversal, SQL metacharacters,
//! Unicode lookalikes and direction overrides, over-long, invalid UTF-8, negative and extreme
//! numbers, and once per method a 10 MB string — sent as the platform admin, alone and inside
//! an otherwise valid request. No answer may be INTERNAL or UNKNOWN (every bad input is the
//! caller's error, with its code), and the server must be serving normally afterwards.

use prost_reflect::{DescriptorPool, DynamicMessage, FieldDescriptor, Kind, Value};
use tonic::Code;

use crate::catalog::setup;
use crate::storage_test;
use crate::support::{TestClient, set_field_path};

const HOSTILE_STRINGS: [&str; 12] = [
    "",
    "a\u{0}b\u{7}\r\n",
    "../../../etc/passwd",
    "tenants/acme/../../tenants/other",
    "x' OR '1'='1",
    "\"; DROP TABLE tenants; --",
    "tеnants/acme", // a Cyrillic "е"
    "ｔｅｎａｎｔｓ／ａｃｍｅ",
    "acme\u{202e}nimda",
    "%00%2e%2e%2f",
    "*",
    "\\",
];

fn long_string() -> String {
    "a".repeat(300)
}

/// The fields of `message` worth poisoning: its scalars, and those of messages directly inside.
fn fields(message: &prost_reflect::MessageDescriptor) -> Vec<Vec<FieldDescriptor>> {
    let mut out = Vec::new();
    for field in message.fields() {
        match field.kind() {
            Kind::Message(inner) if !field.is_map() => {
                if inner.full_name().starts_with("google.protobuf.") {
                    continue;
                }
                for nested in inner.fields() {
                    if is_scalar(&nested) {
                        out.push(vec![field.clone(), nested]);
                    }
                }
            }
            _ if is_scalar(&field) => out.push(vec![field]),
            _ => {}
        }
    }
    out
}

fn is_scalar(field: &FieldDescriptor) -> bool {
    !field.is_map()
        && matches!(
            field.kind(),
            Kind::String | Kind::Bytes | Kind::Int32 | Kind::Int64 | Kind::Uint32
        )
}

/// The hostile values for a field of `kind`.
fn values(kind: &Kind) -> Vec<Value> {
    match kind {
        Kind::String => HOSTILE_STRINGS
            .iter()
            .map(|s| Value::String((*s).to_owned()))
            .chain([Value::String(long_string())])
            .collect(),
        Kind::Bytes => vec![
            Value::Bytes(vec![0xff, 0xfe, 0x00, 0xc3].into()),
            Value::Bytes(Vec::new().into()),
        ],
        Kind::Int32 => [i32::MIN, -1, 0, i32::MAX].map(Value::I32).to_vec(),
        Kind::Int64 => [i64::MIN, -1, 0, i64::MAX].map(Value::I64).to_vec(),
        Kind::Uint32 => [0, u32::MAX].map(Value::U32).to_vec(),
        _ => Vec::new(),
    }
}

/// A request that is valid for the fixture: parent and name fields point at tenant acme's
/// resources, so a hostile value in one other field meets the handler, not only validation.
fn valid_base(input: &prost_reflect::MessageDescriptor) -> DynamicMessage {
    let mut message = DynamicMessage::new(input.clone());
    for field in input.fields() {
        let value = match (field.name(), field.kind()) {
            ("parent" | "tenant", Kind::String) => "tenants/acme",
            ("name", Kind::String) => "tenants/acme",
            _ => continue,
        };
        message.set_field(&field, Value::String(value.to_owned()));
    }
    message
}

async fn call(
    client: &TestClient,
    path: &'static str,
    bytes: Vec<u8>,
    streaming: bool,
) -> Option<tonic::Status> {
    // A Watch method that accepts its request streams until stopped: cut it off.
    let limit = std::time::Duration::from_millis(if streaming { 300 } else { 30_000 });
    match tokio::time::timeout(limit, client.call_raw(path, bytes, &[])).await {
        Ok(Ok(_)) | Err(_) => None,
        Ok(Err(status)) => Some(status),
    }
}

storage_test!(
    hostile_input_is_the_callers_error_never_the_servers,
    |backend| async move {
        let (_db, server, admin) = setup(backend).await;
        let descriptors =
            DescriptorPool::decode(platform_api::FILE_DESCRIPTOR_SET).expect("descriptors");
        let mut cells = 0;
        let mut failures = Vec::new();
        let huge = "a".repeat(10 * 1024 * 1024);
        for service in descriptors.services() {
            if !service.full_name().starts_with("platform.") {
                continue;
            }
            for method in service.methods() {
                let path: &'static str = Box::leak(
                    format!("/{}/{}", service.full_name(), method.name()).into_boxed_str(),
                );
                // Tenants and keys are shared by every cell: destroying them is not the point.
                if matches!(method.name(), "DeleteTenant" | "RewrapDataKeys") {
                    continue;
                }
                let input = method.input();
                let bases = [DynamicMessage::new(input.clone()), valid_base(&input)];
                let mut sent_huge = false;
                for field_path in fields(&input) {
                    let leaf = field_path.last().expect("a field").kind();
                    let mut hostile = values(&leaf);
                    if leaf == Kind::String && !sent_huge {
                        hostile.push(Value::String(huge.clone()));
                        sent_huge = true;
                    }
                    for value in hostile {
                        for base in &bases {
                            let mut message = base.clone();
                            set_field_path(&mut message, &field_path, value.clone());
                            let bytes = prost::Message::encode_to_vec(&message);
                            cells += 1;
                            if let Some(status) =
                                call(&admin, path, bytes, method.is_server_streaming()).await
                                && matches!(status.code(), Code::Internal | Code::Unknown)
                            {
                                let field: Vec<&str> =
                                    field_path.iter().map(|f| f.name()).collect();
                                failures.push(format!(
                                    "{path} {}: {:?} {}",
                                    field.join("."),
                                    status.code(),
                                    status.message()
                                ));
                            }
                        }
                    }
                }
                // Invalid UTF-8 where the contract says string: the whole message is refused.
                if let Some(field) = input
                    .fields()
                    .find(|f| f.kind() == Kind::String && !f.is_list())
                {
                    let mut raw = Vec::new();
                    prost::encoding::encode_key(
                        field.number(),
                        prost::encoding::WireType::LengthDelimited,
                        &mut raw,
                    );
                    prost::encoding::encode_varint(3, &mut raw);
                    raw.extend_from_slice(&[0xff, 0xfe, 0x80]);
                    cells += 1;
                    if let Some(status) =
                        call(&admin, path, raw, method.is_server_streaming()).await
                        && matches!(status.code(), Code::Internal | Code::Unknown)
                    {
                        failures.push(format!(
                            "{path} invalid UTF-8 in {}: {:?} {}",
                            field.name(),
                            status.code(),
                            status.message()
                        ));
                    }
                }
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {cells} hostile requests were answered as server errors:\n{}",
            failures.len(),
            failures.join("\n")
        );
        // Still serving normally.
        assert_eq!(
            admin.health_check("").await.expect("health"),
            tonic_health::pb::health_check_response::ServingStatus::Serving
        );
        admin
            .iam()
            .get_caller(admin.req(platform_api::platform::iam::v1::GetCallerRequest::default()))
            .await
            .expect("a normal call after all of that");
        println!("hostile input: {cells} requests, none a server error");
        server.stop().await;
    }
);
