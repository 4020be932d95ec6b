//! End-to-end tests: the real platformd (in-process on a loopback port, or the binary as a
//! process) on a fresh database per test, called over the wire by real clients.

mod support;

mod catalog;
mod catalog_discovery;
mod catalog_ownership;
mod contract_and_transport;
mod crash;
mod db_outage;
mod deployments;
mod environments;
mod hostile;
mod iam_audit;
mod identity;
mod insights;
mod isolation;
mod overload;
mod process;
mod replicas;
mod scorecards;
mod secrets;
mod storage;
