package admin

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"
)

// Client calls a daemon's admin API.
type Client struct {
	Base  string
	Token string
	HTTP  *http.Client
}

// NewClient builds a client for addr ("127.0.0.1:7070" or a URL). The token
// comes from tokenFile, else TIDEMARK_TOKEN_FILE, else TIDEMARK_TOKEN.
func NewClient(addr, tokenFile string) (*Client, error) {
	base := addr
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	if tokenFile == "" {
		tokenFile = os.Getenv("TIDEMARK_TOKEN_FILE")
	}
	tok := os.Getenv("TIDEMARK_TOKEN")
	if tokenFile != "" {
		b, err := os.ReadFile(tokenFile)
		if err != nil {
			return nil, fmt.Errorf("token file: %w", err)
		}
		tok = tokenOf(strings.TrimSpace(string(b)))
	}
	return &Client{Base: strings.TrimRight(base, "/"), Token: tok, HTTP: &http.Client{Timeout: 2 * time.Minute}}, nil
}

// TrustCA makes the client verify the daemon's TLS certificate against the
// PEM certificates in file (a private CA or the daemon's own self-signed
// certificate) instead of the system's roots.
func (c *Client) TrustCA(file string) error {
	pem, err := os.ReadFile(file)
	if err != nil {
		return fmt.Errorf("ca file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return fmt.Errorf("ca file %s holds no PEM certificate", file)
	}
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	c.HTTP.Transport = t
	return nil
}

// tokenOf takes the token out of a line copied from the daemon's tokens
// file ("name:token" or "name:token:role"), and returns anything else as is.
func tokenOf(s string) string {
	f := strings.Split(s, ":")
	switch {
	case len(f) == 2 && len(f[1]) >= 16:
		return f[1]
	case len(f) == 3 && len(f[1]) >= 16:
		if _, err := ParseRole(f[2]); err == nil {
			return f[1]
		}
	}
	return s
}

// Do sends in as JSON (nil for none) and decodes the answer into out.
func (c *Client) Do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.Base+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach the daemon at %s: %w (is `tidemark run` running? use --addr)", c.Base, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 400 {
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return &HTTPError{Code: resp.StatusCode, Msg: e.Error}
		}
		return &HTTPError{Code: resp.StatusCode, Msg: strings.TrimSpace(string(b))}
	}
	if out != nil {
		return json.Unmarshal(b, out)
	}
	return nil
}

// HTTPError is an error answer from the daemon.
type HTTPError struct {
	Code int
	Msg  string
}

func (e *HTTPError) Error() string {
	hint := ""
	switch e.Code {
	case http.StatusUnauthorized:
		hint = " (pass --token-file or set TIDEMARK_TOKEN)"
	case http.StatusForbidden:
		hint = " (use a token with that role: see the tokens file's third field)"
	}
	return fmt.Sprintf("daemon answered %d: %s%s", e.Code, e.Msg, hint)
}

// IsForbidden reports a token whose role may not make the call.
func IsForbidden(err error) bool {
	var he *HTTPError
	return errors.As(err, &he) && he.Code == http.StatusForbidden
}

// IsUnauthorized reports a refused token.
func IsUnauthorized(err error) bool {
	var he *HTTPError
	return errors.As(err, &he) && he.Code == http.StatusUnauthorized
}
