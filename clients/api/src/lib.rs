//! The platform API contract as Rust types: prost messages plus tonic clients and servers for
//! every service under `proto/`, generated at build time (nothing generated is committed).
//!
//! One crate holds all of it so that the server, the CLI, the SDK and the tests agree on one
//! contract, and so that the file descriptor set used for reflection is the one compiled here.

/// Generated code for the `platform.*.v1` packages, laid out like the proto packages.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod platform {
    /// `platform.catalog.v1`: the software catalog.
    pub mod catalog {
        #[allow(missing_docs)]
        pub mod v1 {
            tonic::include_proto!("platform.catalog.v1");
        }
    }
    /// `platform.environments.v1`: environments, locks and provisioning.
    pub mod environments {
        #[allow(missing_docs)]
        pub mod v1 {
            tonic::include_proto!("platform.environments.v1");
        }
    }
    /// `platform.deployments.v1`: deployments, their state machine and logs.
    pub mod deployments {
        #[allow(missing_docs)]
        pub mod v1 {
            tonic::include_proto!("platform.deployments.v1");
        }
    }
    /// `platform.secrets.v1`: versioned, encrypted secrets.
    pub mod secrets {
        #[allow(missing_docs)]
        pub mod v1 {
            tonic::include_proto!("platform.secrets.v1");
        }
    }
    /// `platform.iam.v1`: tenants, roles, bindings, service accounts, permission checks.
    pub mod iam {
        #[allow(missing_docs)]
        pub mod v1 {
            tonic::include_proto!("platform.iam.v1");
        }
    }
    /// `platform.audit.v1`: the tamper-evident audit log.
    pub mod audit {
        #[allow(missing_docs)]
        pub mod v1 {
            tonic::include_proto!("platform.audit.v1");
        }
    }
    /// `platform.insights.v1`: DORA metrics, service status and scorecards.
    pub mod insights {
        #[allow(missing_docs)]
        pub mod v1 {
            tonic::include_proto!("platform.insights.v1");
        }
    }
}

/// The encoded `FileDescriptorSet` of the whole contract, including the well-known types it
/// imports. Served by gRPC reflection and walked by contract tests.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/platform_descriptor.bin"));

/// The fully-qualified names of the contract's services, in the order the README lists them.
pub const SERVICE_NAMES: [&str; 7] = [
    "platform.catalog.v1.CatalogService",
    "platform.environments.v1.EnvironmentService",
    "platform.deployments.v1.DeploymentService",
    "platform.secrets.v1.SecretService",
    "platform.iam.v1.IamService",
    "platform.audit.v1.AuditService",
    "platform.insights.v1.InsightsService",
];
