package config

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/tidemarkhq/tidemark/checkpoints"
)

// AuditConfig is the audit log's tamper evidence.
type AuditConfig struct {
	// HMACKeyFile holds the key (32+ bytes, e.g. openssl rand -hex 32) that
	// chains audit entries; TIDEMARK_AUDIT_HMAC_KEY also works. Every daemon
	// sharing a store needs the same key. Without one, entries are written
	// unchained (and a warning logged).
	HMACKeyFile string `yaml:"hmac_key_file"`
	// VerifyInterval is how often the daemon verifies the whole chain and
	// sets tidemark_audit_chain_broken_links. Default 1m.
	VerifyInterval time.Duration `yaml:"verify_interval"`
}

// ErrNoChainKey says the audit chain has no key.
var ErrNoChainKey = errors.New("no audit HMAC key: set audit.hmac_key_file or TIDEMARK_AUDIT_HMAC_KEY")

// ChainKey reads the audit HMAC key; nil, nil when none is configured.
func (c *Config) ChainKey() ([]byte, error) {
	s, err := secret(c.Audit.HMACKeyFile, "TIDEMARK_AUDIT_HMAC_KEY")
	if err != nil {
		return nil, fmt.Errorf("audit.hmac_key_file: %w", err)
	}
	if s == "" {
		return nil, nil
	}
	k, err := checkpoints.ParseChainKey(s)
	if err != nil {
		return nil, fmt.Errorf("audit.hmac_key_file / TIDEMARK_AUDIT_HMAC_KEY: %w", err)
	}
	return k, nil
}

// withAuditChain wraps s so its audit entries are chained, when a key is
// configured. The key is never logged.
func (c *Config) withAuditChain(s checkpoints.Store, log *slog.Logger, reg prometheus.Registerer) (checkpoints.Store, error) {
	key, err := c.ChainKey()
	if err != nil {
		s.Close()
		return nil, err
	}
	if key == nil {
		log.Warn("audit: entries are not chained, so a forged or deleted entry goes unnoticed; set audit.hmac_key_file (see docs/security.md)")
		return s, nil
	}
	ch, err := checkpoints.WithAuditChain(s, key, checkpoints.ChainLogger(log), checkpoints.ChainRegisterer(reg))
	if err != nil {
		s.Close()
		return nil, err
	}
	return ch, nil
}
