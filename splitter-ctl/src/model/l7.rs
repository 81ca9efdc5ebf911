//! The protocol a service speaks (`l7`), which decides what the kernel reads of its
//! connections and so which signals can judge a rollout of it.

use splitter_common::l7::{FLOW_L7_H2, FLOW_L7_HTTP1, FLOW_L7_OPAQUE, service_l7_flags};

/// A service's `l7` setting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum L7 {
    /// Whatever each connection's first bytes show: HTTP/1.x, HTTP/2 with prior knowledge
    /// (h2c), or opaque (TLS, anything else).
    #[default]
    Auto,
    /// HTTP/1.x only; anything else is opaque.
    Http1,
    /// gRPC over h2c: calls read from frame headers, failed calls counted by their kind.
    Grpc,
    /// HTTP/2 with prior knowledge (h2c): calls and their latency read as for gRPC.
    Http2,
    /// Nothing is read above TCP (TLS): only L4 signals, so the kernel's error and latency
    /// gates cannot judge it.
    Opaque,
}

impl L7 {
    /// The config's words, for `choice`.
    pub const CHOICES: [(&'static str, Self); 5] = [
        ("auto", Self::Auto),
        ("http1", Self::Http1),
        ("grpc", Self::Grpc),
        ("http2", Self::Http2),
        ("opaque", Self::Opaque),
    ];

    /// The `Service::flags` bits the kernel reads it from.
    #[must_use]
    pub const fn service_flags(self) -> u32 {
        service_l7_flags(match self {
            Self::Auto => 0,
            Self::Http1 => FLOW_L7_HTTP1,
            Self::Grpc | Self::Http2 => FLOW_L7_H2,
            Self::Opaque => FLOW_L7_OPAQUE,
        })
    }

    /// The config's word for it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        Self::CHOICES
            .iter()
            .find(|(_, l7)| *l7 == self)
            .map_or("auto", |(word, _)| word)
    }

    /// The setting a config word names.
    #[must_use]
    pub fn parse(word: &str) -> Option<Self> {
        Self::CHOICES
            .iter()
            .find(|(w, _)| *w == word)
            .map(|(_, l7)| *l7)
    }
}

#[cfg(test)]
mod tests {
    use splitter_common::l7::configured_l7;

    use super::*;

    #[test]
    fn each_setting_reaches_the_kernel_as_its_flow_bits() {
        let bits = |l7: L7| configured_l7(l7.service_flags() | 0xab00);
        assert_eq!(bits(L7::Auto), 0);
        assert_eq!(bits(L7::Http1), FLOW_L7_HTTP1);
        assert_eq!(bits(L7::Grpc), FLOW_L7_H2);
        assert_eq!(bits(L7::Http2), FLOW_L7_H2);
        assert_eq!(bits(L7::Opaque), FLOW_L7_OPAQUE);
        for (word, l7) in L7::CHOICES {
            assert_eq!((l7.as_str(), L7::parse(word)), (word, Some(l7)));
        }
    }
}
