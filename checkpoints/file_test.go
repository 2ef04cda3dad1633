package checkpoints_test

import (
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/checkpoints/checkpointstest"
)

func TestStores(t *testing.T) {
	for name, open := range map[string]func(t *testing.T) checkpoints.Store{
		"memory": func(t *testing.T) checkpoints.Store { return checkpointstest.New() },
		"file": func(t *testing.T) checkpoints.Store {
			s, err := checkpoints.OpenFile(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			return s
		},
	} {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			s := open(t)
			if _, err := s.Get(ctx, "capture/a.b"); err != checkpoints.ErrNotFound {
				t.Fatalf("missing key: %v", err)
			}
			if err := checkpoints.PutJSON(ctx, s, "capture/a.b", map[string]int{"n": 1}); err != nil {
				t.Fatal(err)
			}
			s.Put(ctx, "capture/a.b", []byte(`{"n":2}`))
			s.Put(ctx, "mark/t/0", []byte(`x`))
			v, ok, err := checkpoints.GetJSON[map[string]int](ctx, s, "capture/a.b")
			if err != nil || !ok || v["n"] != 2 {
				t.Fatalf("get: %v %v %v", v, ok, err)
			}
			l, _ := s.List(ctx, "capture/")
			if len(l) != 1 {
				t.Fatalf("list: %v", l)
			}
			s.Delete(ctx, "capture/a.b")
			if _, err := s.Get(ctx, "capture/a.b"); err != checkpoints.ErrNotFound {
				t.Fatalf("deleted key: %v", err)
			}
			for i := 0; i < 5; i++ {
				s.Append(ctx, checkpoints.AuditEntry{Actor: fmt.Sprint("op", i%2), Action: "pause", Result: "ok"})
			}
			all, _ := s.Audit(ctx, checkpoints.AuditFilter{})
			op1, _ := s.Audit(ctx, checkpoints.AuditFilter{Actor: "op1"})
			last, _ := s.Audit(ctx, checkpoints.AuditFilter{Limit: 2})
			if len(all) != 5 || len(op1) != 2 || len(last) != 2 || last[1].Actor != "op0" {
				t.Fatalf("audit: %d %d %d", len(all), len(op1), len(last))
			}
		})
	}
}

func TestFileStoreTornWriteUsesPrevious(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, _ := checkpoints.OpenFile(dir)
	s.Put(ctx, "k", []byte("first"))
	s.Put(ctx, "k", []byte("second"))
	name := filepath.Join(dir, "kv", base64.RawURLEncoding.EncodeToString([]byte("k")))
	b, _ := os.ReadFile(name)
	os.WriteFile(name, b[:len(b)-3], 0o600) // a crash tore the newest value
	v, err := s.Get(ctx, "k")
	if err != nil || string(v) != "first" {
		t.Fatalf("torn value: got %q %v, want the previous value", v, err)
	}
	// A torn audit line is skipped, and the next entry still lands.
	s.Append(ctx, checkpoints.AuditEntry{Action: "a"})
	f, _ := os.OpenFile(filepath.Join(dir, "audit.log"), os.O_APPEND|os.O_WRONLY, 0)
	f.Write([]byte(`{"crc":1,"entry":{"act`))
	f.Close()
	s.Append(ctx, checkpoints.AuditEntry{Action: "b"})
	es, _ := s.Audit(ctx, checkpoints.AuditFilter{})
	if len(es) != 2 || es[0].Action != "a" || es[1].Action != "b" {
		t.Fatalf("audit after torn line: %+v", es)
	}
}

func TestFileStoreConcurrentWriters(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	a, _ := checkpoints.OpenFile(dir)
	b, _ := checkpoints.OpenFile(dir)
	var wg sync.WaitGroup
	for w, s := range []checkpoints.Store{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 100; i++ {
				s.Put(ctx, "shared", []byte(fmt.Sprintf("writer-%d-%03d", w, i)))
				s.Append(ctx, checkpoints.AuditEntry{Actor: fmt.Sprint(w), Action: "x"})
			}
		}()
	}
	wg.Wait()
	v, err := a.Get(ctx, "shared")
	if err != nil || (string(v) != "writer-0-099" && string(v) != "writer-1-099") {
		t.Fatalf("after concurrent writers: %q %v", v, err)
	}
	es, _ := b.Audit(ctx, checkpoints.AuditFilter{})
	if len(es) != 200 {
		t.Fatalf("audit has %d entries, want 200", len(es))
	}
}
