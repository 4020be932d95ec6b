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

/// The codec of every generated client and server: prost's, except that a message that does
/// not decode (malformed wire data, invalid UTF-8 in a string field) is the sender's error,
/// INVALID_ARGUMENT, rather than tonic's INTERNAL. A server receives requests from anyone; a
/// request it cannot parse is never the server's fault. (A client sees the same code for a
/// response it cannot decode.)
pub mod codec {
    use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
    use tonic::{Code, Status};

    #[derive(Debug, Clone)]
    pub struct ProstCodec<T, U>(tonic_prost::ProstCodec<T, U>);

    impl<T, U> Default for ProstCodec<T, U> {
        fn default() -> Self {
            ProstCodec(tonic_prost::ProstCodec::default())
        }
    }

    impl<T, U> Codec for ProstCodec<T, U>
    where
        T: prost::Message + Send + 'static,
        U: prost::Message + Default + Send + 'static,
    {
        type Encode = T;
        type Decode = U;
        type Encoder = tonic_prost::ProstEncoder<T>;
        type Decoder = ProstDecoder<U>;

        fn encoder(&mut self) -> Self::Encoder {
            self.0.encoder()
        }

        fn decoder(&mut self) -> Self::Decoder {
            ProstDecoder(self.0.decoder())
        }
    }

    /// prost's decoder with decode failures mapped to INVALID_ARGUMENT.
    #[derive(Debug)]
    pub struct ProstDecoder<U>(tonic_prost::ProstDecoder<U>);

    impl<U: prost::Message + Default> Decoder for ProstDecoder<U> {
        type Item = U;
        type Error = Status;

        fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
            self.0.decode(buf).map_err(|status| match status.code() {
                Code::Internal => Status::invalid_argument(format!(
                    "the message is not valid protobuf for this method: {}",
                    status
                        .message()
                        .trim_start_matches("failed to decode Protobuf message: ")
                )),
                _ => status,
            })
        }

        fn buffer_settings(&self) -> BufferSettings {
            self.0.buffer_settings()
        }
    }
}
