//! The contract as data: every RPC of every service, read from the compiled file descriptor set.
//!
//! The server uses it to tell "part of the contract, not implemented yet" from "no such method",
//! and tests (and later the permission table) walk it so that no RPC can be forgotten.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use prost::Message;
use prost_types::FileDescriptorSet;

/// One RPC of the contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rpc {
    /// `platform.catalog.v1.CatalogService`
    pub service: String,
    /// `CreateEntity`
    pub method: String,
    pub client_streaming: bool,
    pub server_streaming: bool,
}

impl Rpc {
    /// The HTTP/2 path of the call: `/platform.catalog.v1.CatalogService/CreateEntity`.
    pub fn path(&self) -> String {
        format!("/{}/{}", self.service, self.method)
    }
}

static RPCS: LazyLock<BTreeMap<String, Rpc>> = LazyLock::new(|| {
    // The set is produced by our own build script; failing to decode it is a build bug that
    // every test would show, so an empty table (every call "unknown") is the safe fallback.
    let set = FileDescriptorSet::decode(platform_api::FILE_DESCRIPTOR_SET).unwrap_or_default();
    let mut rpcs = BTreeMap::new();
    for file in &set.file {
        let package = file.package();
        if !package.starts_with("platform.") {
            continue;
        }
        for service in &file.service {
            let service_name = format!("{package}.{}", service.name());
            for method in &service.method {
                let rpc = Rpc {
                    service: service_name.clone(),
                    method: method.name().to_owned(),
                    client_streaming: method.client_streaming(),
                    server_streaming: method.server_streaming(),
                };
                rpcs.insert(rpc.path(), rpc);
            }
        }
    }
    rpcs
});

/// Every RPC of the platform contract, keyed by path, in a stable order.
pub fn rpcs() -> &'static BTreeMap<String, Rpc> {
    &RPCS
}

/// Looks up an RPC by its HTTP/2 path.
pub fn rpc_by_path(path: &str) -> Option<&'static Rpc> {
    RPCS.get(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_service_of_the_contract_has_methods() {
        for service in platform_api::SERVICE_NAMES {
            let count = rpcs().values().filter(|r| r.service == service).count();
            assert!(count > 0, "{service} has no RPCs in the descriptor set");
        }
        let services: std::collections::BTreeSet<_> =
            rpcs().values().map(|r| r.service.as_str()).collect();
        assert_eq!(
            services.len(),
            platform_api::SERVICE_NAMES.len(),
            "{services:?}"
        );
    }

    #[test]
    fn paths_round_trip() {
        let rpc = rpcs().values().next().expect("at least one rpc");
        assert_eq!(rpc_by_path(&rpc.path()), Some(rpc));
        assert_eq!(rpc_by_path("/platform.nope.v1.Nope/Nothing"), None);
    }
}
