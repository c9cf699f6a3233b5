//! The client layer: what remexec's own tools, its worker and embedders share to talk to a
//! REAPI server.
