package admin

import (
	"context"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestClientTrustCA: an https daemon with a private certificate is reached
// only with --ca-file naming it; without it, or with a file holding no
// certificate, the client says why.
func TestClientTrustCA(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"name":"ops"}`))
	}))
	defer srv.Close()
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	junk := filepath.Join(dir, "junk.pem")
	if err := os.WriteFile(junk, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var out struct{ Name string }

	cl, err := NewClient(srv.URL, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := cl.Do(ctx, "GET", "/v1/whoami", nil, &out); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("without the CA: %v, want a certificate error", err)
	}
	if err := cl.TrustCA(junk); err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Fatalf("junk CA file: %v", err)
	}
	if err := cl.TrustCA(filepath.Join(dir, "missing.pem")); err == nil {
		t.Fatal("a missing CA file was accepted")
	}
	if err := cl.TrustCA(ca); err != nil {
		t.Fatal(err)
	}
	if err := cl.Do(ctx, "GET", "/v1/whoami", nil, &out); err != nil || out.Name != "ops" {
		t.Fatalf("with the CA: %v %+v", err, out)
	}
}
