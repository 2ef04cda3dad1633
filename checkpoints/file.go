package checkpoints

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/cespare/xxhash/v2"
)

// FileStore keeps each key in its own file under a directory, for single-machine
// runs and tests. Several processes may share the directory.
//
// A Put writes a temporary file, fsyncs it, keeps the current value as
// "<key>.prev" and renames the new file into place. Every file starts with a
// CRC-32C of its content, so a value damaged by a crash (or a disk) is detected
// and the previous value is returned instead.
type FileStore struct {
	dir string
}

var _ Store = (*FileStore)(nil)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// OpenFile opens (creating if needed) a file store in dir.
func OpenFile(dir string) (*FileStore, error) {
	if err := os.MkdirAll(filepath.Join(dir, "kv"), 0o700); err != nil {
		return nil, fmt.Errorf("checkpoints: %w", err)
	}
	return &FileStore{dir: dir}, nil
}

// fileName encodes a key so that any key is a single safe file name.
func (s *FileStore) fileName(key string) string {
	return filepath.Join(s.dir, "kv", base64.RawURLEncoding.EncodeToString([]byte(key)))
}

func (s *FileStore) Get(_ context.Context, key string) ([]byte, error) {
	name := s.fileName(key)
	v, err := readChecked(name)
	if err == nil {
		return v, nil
	}
	if errors.Is(err, os.ErrNotExist) {
		return nil, ErrNotFound
	}
	// Damaged: fall back to the value before it.
	if prev, perr := readChecked(name + ".prev"); perr == nil {
		return prev, nil
	}
	return nil, fmt.Errorf("checkpoints: %s is damaged and has no intact previous value: %w", key, err)
}

var errChecksum = errors.New("checksum mismatch")

func readChecked(name string) ([]byte, error) {
	b, err := os.ReadFile(name)
	if err != nil {
		return nil, err
	}
	if len(b) < 4 || crc32.Checksum(b[4:], castagnoli) != binary.BigEndian.Uint32(b) {
		return nil, errChecksum
	}
	return b[4:], nil
}

// lock takes the store-wide write lock, shared with every process on the
// directory: CompareAndSwap reads, compares and writes under it, so no Put,
// Delete or other CompareAndSwap lands in between.
func (s *FileStore) lock() (unlock func(), err error) {
	f, err := os.OpenFile(filepath.Join(s.dir, "kv", ".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("checkpoints: lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("checkpoints: lock: %w", err)
	}
	return func() { syscall.Flock(int(f.Fd()), syscall.LOCK_UN); f.Close() }, nil
}

// fileVersion is the version of a value in the file store: a hash of its
// bytes, 0 for none. Equal content, equal version: a compare-and-swap
// against an old read succeeds exactly when the value is still what was
// read, which is all a read-modify-write needs.
func fileVersion(v []byte, found bool) int64 {
	if !found {
		return 0
	}
	return int64(xxhash.Sum64(v)>>2) + 1
}

func (s *FileStore) GetVersion(ctx context.Context, key string) ([]byte, int64, error) {
	v, err := s.Get(ctx, key)
	if err != nil {
		return nil, 0, err
	}
	return v, fileVersion(v, true), nil
}

func (s *FileStore) CompareAndSwap(ctx context.Context, key string, old int64, value []byte) (int64, error) {
	unlock, err := s.lock()
	if err != nil {
		return 0, err
	}
	defer unlock()
	cur, err := s.Get(ctx, key)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return 0, err
	}
	if fileVersion(cur, err == nil) != old {
		return 0, ErrConflict
	}
	if value == nil {
		return 0, s.delete(key)
	}
	return fileVersion(value, true), s.put(key, value)
}

func (s *FileStore) Put(_ context.Context, key string, value []byte) error {
	unlock, err := s.lock()
	if err != nil {
		return err
	}
	defer unlock()
	return s.put(key, value)
}

func (s *FileStore) put(key string, value []byte) error {
	name := s.fileName(key)
	tmp, err := os.CreateTemp(filepath.Dir(name), ".tmp-*")
	if err != nil {
		return fmt.Errorf("checkpoints: put %s: %w", key, err)
	}
	defer os.Remove(tmp.Name())
	buf := binary.BigEndian.AppendUint32(make([]byte, 0, 4+len(value)), crc32.Checksum(value, castagnoli))
	buf = append(buf, value...)
	if _, err := tmp.Write(buf); err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("checkpoints: put %s: %w", key, err)
	}
	// Keep the current intact value as the fallback before replacing it.
	if _, err := readChecked(name); err == nil {
		os.Remove(name + ".prev")
		os.Link(name, name+".prev")
	}
	if err := os.Rename(tmp.Name(), name); err != nil {
		return fmt.Errorf("checkpoints: put %s: %w", key, err)
	}
	return syncDir(filepath.Dir(name))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func (s *FileStore) Delete(_ context.Context, key string) error {
	unlock, err := s.lock()
	if err != nil {
		return err
	}
	defer unlock()
	return s.delete(key)
}

func (s *FileStore) delete(key string) error {
	name := s.fileName(key)
	for _, n := range []string{name, name + ".prev"} {
		if err := os.Remove(n); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("checkpoints: delete %s: %w", key, err)
		}
	}
	return nil
}

func (s *FileStore) List(ctx context.Context, prefix string) (map[string][]byte, error) {
	ents, err := os.ReadDir(filepath.Join(s.dir, "kv"))
	if err != nil {
		return nil, fmt.Errorf("checkpoints: list: %w", err)
	}
	out := map[string][]byte{}
	for _, e := range ents {
		n := e.Name()
		if strings.HasPrefix(n, ".") || strings.HasSuffix(n, ".prev") {
			continue
		}
		k, err := base64.RawURLEncoding.DecodeString(n)
		if err != nil || !strings.HasPrefix(string(k), prefix) {
			continue
		}
		v, err := s.Get(ctx, string(k))
		if err == nil {
			out[string(k)] = v
		}
	}
	return out, nil
}

// auditLine is one line of the audit file: a checksum and the entry, so a
// line torn by a crash is recognised and skipped.
type auditLine struct {
	CRC   uint32          `json:"crc"`
	Entry json.RawMessage `json:"entry"`
}

func (s *FileStore) Append(_ context.Context, e AuditEntry) error {
	if e.Time.IsZero() {
		e.Time = time.Now().UTC()
	}
	entry, err := json.Marshal(e)
	if err != nil {
		return err
	}
	line, _ := json.Marshal(auditLine{CRC: crc32.Checksum(entry, castagnoli), Entry: entry})
	f, err := os.OpenFile(filepath.Join(s.dir, "audit.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("checkpoints: audit: %w", err)
	}
	defer f.Close()
	// Two processes appending at once must not interleave within a line.
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		return fmt.Errorf("checkpoints: audit lock: %w", err)
	}
	defer syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	// A torn last line (crash mid-append) must not swallow this entry.
	if st, err := f.Stat(); err == nil && st.Size() > 0 {
		last := make([]byte, 1)
		if r, err := os.Open(f.Name()); err == nil {
			r.ReadAt(last, st.Size()-1)
			r.Close()
			if last[0] != '\n' {
				line = append([]byte{'\n'}, line...)
			}
		}
	}
	if _, err := f.Write(append(line, '\n')); err != nil {
		return fmt.Errorf("checkpoints: audit: %w", err)
	}
	return f.Sync()
}

// AuditLog returns every intact entry in file order, the order of the
// appends.
func (s *FileStore) AuditLog(_ context.Context) ([]AuditEntry, error) {
	return s.readAudit(AuditFilter{})
}

func (s *FileStore) readAudit(f AuditFilter) ([]AuditEntry, error) {
	file, err := os.Open(filepath.Join(s.dir, "audit.log"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("checkpoints: audit: %w", err)
	}
	defer file.Close()
	var out []AuditEntry
	sc := bufio.NewScanner(file)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		var l auditLine
		if err := json.Unmarshal(bytes.TrimSpace(sc.Bytes()), &l); err != nil || crc32.Checksum(l.Entry, castagnoli) != l.CRC {
			continue // torn or damaged line
		}
		var e AuditEntry
		if json.Unmarshal(l.Entry, &e) == nil && f.Match(e) {
			out = append(out, e)
		}
	}
	return out, sc.Err()
}

func (s *FileStore) Audit(_ context.Context, f AuditFilter) ([]AuditEntry, error) {
	out, err := s.readAudit(f)
	if err != nil {
		return nil, err
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Time.Before(out[j].Time) })
	if f.Limit > 0 && len(out) > f.Limit {
		out = out[len(out)-f.Limit:]
	}
	return out, nil
}

func (s *FileStore) Close() error { return nil }
