package checkpoints

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// ChainLink makes an audit entry tamper-evident. MAC is an HMAC-SHA256, under
// a key only the daemons hold, of the entry with MAC empty; Prev holds the
// MACs of every entry that had no successor when this one was written (the
// frontier: one entry, or a few when daemons appended at the same moment).
// So every entry but the newest is covered by a later MAC: an entry cannot be
// forged or altered without the key, nor removed without a later entry
// naming a MAC that is no longer there.
type ChainLink struct {
	ID   string   `json:"id"`
	Prev []string `json:"prev"`
	MAC  string   `json:"mac"`
}

// AuditLogReader is implemented by stores that can return every audit entry
// in the order they were written (log order), which verification prefers to
// time order: a successor must come after what it names.
type AuditLogReader interface {
	AuditLog(ctx context.Context) ([]AuditEntry, error)
}

// AuditTailReader is implemented by stores that can return the end of the
// audit log without copying all of it, so that Chained.Append costs the same
// at ten entries and at ten million.
type AuditTailReader interface {
	// AuditLogSince returns the entry at index n-1 of the log order (nil
	// for n == 0, or when the log has fewer than n entries) and every entry
	// after it. The entry at n-1 lets a caller that has verified the first n
	// entries see whether they are still the ones it verified.
	AuditLogSince(ctx context.Context, n int) (last *AuditEntry, tail []AuditEntry, err error)
}

// MinChainKey is the shortest HMAC key accepted: 32 bytes, SHA-256's size.
const MinChainKey = 32

// ErrChainKey is returned for a missing or short key.
var ErrChainKey = fmt.Errorf("checkpoints: the audit HMAC key must hold at least %d bytes (openssl rand -hex 32)", MinChainKey)

// Chained wraps a Store so that every audit entry it appends is chained and
// every read of the audit log verifies the chain. Several daemons may append
// through their own Chained on one shared store: each links its entry to the
// frontier it has read, and entries written at the same moment by two
// daemons fork the chain for one step until the next entry names both.
type Chained struct {
	Store
	key []byte
	log *slog.Logger

	// mu makes one process's appends one after another, so each names the
	// one before it.
	mu      sync.Mutex
	brokenG prometheus.Gauge
	breaksC prometheus.Counter
	seen    map[string]bool // breaks already counted, by Break.String(); guarded by mu
	tip     chainTip        // what Append has verified so far; guarded by mu
}

// chainTip is what Append knows of an intact prefix of the log (in log
// order): how long it is, a fingerprint of its last entry, and enough of
// its links to extend the check to entries appended since, by this daemon
// or another, one entry at a time. Verify and Audit still check the whole
// chain; the tip only spares Append from doing so.
type chainTip struct {
	n     int             // entries verified, from the start of the log
	last  string          // fingerprint of entry n-1; "" when n == 0
	macs  map[string]bool // MACs of the verified entries
	ids   map[string]bool // their chain ids
	named map[string]bool // MACs that some verified entry names
	front map[string]bool // verified MACs no verified entry names: the frontier
	begun bool            // a chained entry was seen: unchained ones are breaks from now on
}

func newChainTip() chainTip {
	return chainTip{macs: map[string]bool{}, ids: map[string]bool{}, named: map[string]bool{}, front: map[string]bool{}}
}

// extend checks e as the entry after the tip and takes it in. It returns
// false, leaving the tip as it was, for an entry that is not intact or does
// not link to verified entries only: the caller then verifies the whole
// chain, which names the break.
func (t *chainTip) extend(e AuditEntry, key []byte) bool {
	if e.Chain == nil {
		if t.begun {
			return false
		}
		t.n, t.last = t.n+1, fingerprint(e)
		return true
	}
	if !validMAC(key, e) || t.ids[e.Chain.ID] || t.macs[e.Chain.MAC] {
		return false
	}
	for _, p := range e.Chain.Prev {
		if !t.macs[p] {
			return false
		}
	}
	t.take(e, true)
	return true
}

// take moves the tip past e; an intact e joins the links.
func (t *chainTip) take(e AuditEntry, intact bool) {
	t.n, t.last = t.n+1, fingerprint(e)
	if !intact {
		return
	}
	for _, p := range e.Chain.Prev {
		t.named[p] = true
		delete(t.front, p)
	}
	t.macs[e.Chain.MAC], t.ids[e.Chain.ID], t.begun = true, true, true
	if !t.named[e.Chain.MAC] {
		t.front[e.Chain.MAC] = true
	}
}

// rebuildTip makes a tip of the whole log after a full verification
// counted and logged its breaks: entries whose MAC checks out take part in
// the links (as in the frontier a full check links to), the others are
// passed over, so that the appends after a break are cheap again.
func rebuildTip(all []AuditEntry, key []byte) chainTip {
	t := newChainTip()
	for _, e := range all {
		t.take(e, validMAC(key, e))
		t.begun = t.begun || e.Chain != nil
	}
	return t
}

func (t *chainTip) frontier() []string {
	out := make([]string, 0, len(t.front))
	for m := range t.front {
		out = append(out, m)
	}
	sort.Strings(out)
	return out
}

// fingerprint names an entry by a hash of all of it: its MAC alone would
// not change when someone alters the entry and leaves the MAC as it was.
func fingerprint(e AuditEntry) string {
	b, _ := json.Marshal(e)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// ChainOption configures WithAuditChain.
type ChainOption func(*Chained)

// ChainLogger sets where broken links are logged.
func ChainLogger(l *slog.Logger) ChainOption { return func(c *Chained) { c.log = l } }

// ChainRegisterer registers tidemark_audit_chain_broken_links and
// tidemark_audit_chain_breaks_total.
func ChainRegisterer(r prometheus.Registerer) ChainOption {
	return func(c *Chained) {
		if r != nil {
			r.MustRegister(c.brokenG, c.breaksC)
		}
	}
}

// WithAuditChain returns s with chained, verified audit entries.
func WithAuditChain(s Store, key []byte, opts ...ChainOption) (*Chained, error) {
	if len(key) < MinChainKey {
		return nil, ErrChainKey
	}
	c := &Chained{Store: s, key: append([]byte(nil), key...), log: slog.Default(), seen: map[string]bool{}, tip: newChainTip(),
		brokenG: prometheus.NewGauge(prometheus.GaugeOpts{Name: "tidemark_audit_chain_broken_links",
			Help: "Broken links the newest verification of the audit chain found (forged, altered, deleted, reordered or unsigned entries); 0 when intact."}),
		breaksC: prometheus.NewCounter(prometheus.CounterOpts{Name: "tidemark_audit_chain_breaks_total",
			Help: "Distinct broken links of the audit chain found since the daemon started."}),
	}
	for _, o := range opts {
		o(c)
	}
	return c, nil
}

// Sync is the wrapped store's Sync (see Syncer).
func (c *Chained) Sync(ctx context.Context) error { return Sync(ctx, c.Store) }

var (
	_ Syncer = (*KafkaStore)(nil)
	_ Syncer = (*Chained)(nil)
)

// Metrics returns the broken-links gauge and the breaks counter.
func (c *Chained) Metrics() []prometheus.Collector {
	return []prometheus.Collector{c.brokenG, c.breaksC}
}

// Append links e to the frontier of the chain and appends it. Entries are
// stored as their JSON reads back, so the MAC covers exactly what a reader
// will decode.
//
// It checks only the entries appended since its previous call (by any
// daemon): their MACs, ids and links, against what it verified before. Only
// when one of them does not check out, or the entries it verified before
// are no longer the log's first ones, does it verify the whole chain (which
// counts and logs the break, as Verify does) and link to the frontier of
// the intact entries, as a full check would.
func (c *Chained) Append(ctx context.Context, e AuditEntry) error {
	if e.Time.IsZero() {
		e.Time = time.Now().UTC()
	}
	e.Chain = nil
	e, err := normalize(e)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	prev, err := c.linkTo(ctx)
	if err != nil {
		return fmt.Errorf("checkpoints: audit chain: read the log to link to: %w", err)
	}
	id := make([]byte, 12)
	rand.Read(id)
	e.Chain = &ChainLink{ID: hex.EncodeToString(id), Prev: prev}
	e.Chain.MAC = macOf(c.key, e)
	return c.Store.Append(ctx, e)
}

// linkTo returns the frontier a new entry names: from the tip extended by
// the entries appended since, or, when that fails, from the whole log.
// Called with mu held.
func (c *Chained) linkTo(ctx context.Context) ([]string, error) {
	last, tail, err := c.since(ctx, c.tip.n)
	if err != nil {
		return nil, err
	}
	if (c.tip.n == 0) == (last == nil) && (last == nil || fingerprint(*last) == c.tip.last) {
		tip := c.tip
		ok := true
		for _, e := range tail {
			if ok = tip.extend(e, c.key); !ok {
				break
			}
		}
		if ok {
			c.tip = tip
			return tip.frontier(), nil
		}
	}
	// Tampered with, or the store's order changed: check everything.
	all, err := c.ordered(ctx)
	if err != nil {
		return nil, err
	}
	rep := VerifyChain(all, c.key)
	c.recordLocked(rep)
	c.tip = rebuildTip(all, c.key)
	return rep.Head, nil
}

// since returns the entry at n-1 and the entries after it, in log order.
func (c *Chained) since(ctx context.Context, n int) (*AuditEntry, []AuditEntry, error) {
	if r, ok := c.Store.(AuditTailReader); ok {
		return r.AuditLogSince(ctx, n)
	}
	all, err := c.ordered(ctx)
	if err != nil || n == 0 {
		return nil, all, err
	}
	if n > len(all) {
		return nil, nil, nil
	}
	return &all[n-1], all[n:], nil
}

// Audit verifies the whole chain, counts what is broken, and returns the
// entries f selects (broken ones included: hiding them would hide the attack).
func (c *Chained) Audit(ctx context.Context, f AuditFilter) ([]AuditEntry, error) {
	all, err := c.Store.Audit(ctx, AuditFilter{})
	if err != nil {
		return nil, err
	}
	if _, err := c.Verify(ctx); err != nil {
		c.log.Error("checkpoints: cannot verify the audit chain", "err", err)
	}
	var out []AuditEntry
	for _, e := range all {
		if f.Match(e) {
			out = append(out, e)
		}
	}
	if f.Limit > 0 && len(out) > f.Limit {
		out = out[len(out)-f.Limit:]
	}
	return out, nil
}

// Verify checks the chain, sets the metrics, logs breaks not seen before,
// and returns the report.
func (c *Chained) Verify(ctx context.Context) (ChainReport, error) {
	all, err := c.ordered(ctx)
	if err != nil {
		return ChainReport{}, err
	}
	rep := VerifyChain(all, c.key)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.recordLocked(rep)
	return rep, nil
}

// recordLocked sets the metrics from a verification of the whole chain and
// logs breaks not seen before. Called with mu held.
func (c *Chained) recordLocked(rep ChainReport) {
	c.brokenG.Set(float64(len(rep.Breaks)))
	for _, b := range rep.Breaks {
		if k := b.String(); !c.seen[k] {
			c.seen[k] = true
			c.breaksC.Inc()
			c.log.Error("checkpoints: the audit chain is broken", "link", k)
		}
	}
}

// Run verifies the chain every interval until ctx ends, so the metric moves
// even when nobody reads the audit log.
func (c *Chained) Run(ctx context.Context, every time.Duration) error {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if _, err := c.Verify(ctx); err != nil && ctx.Err() == nil {
			c.log.Warn("checkpoints: cannot verify the audit chain", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func (c *Chained) ordered(ctx context.Context) ([]AuditEntry, error) {
	if r, ok := c.Store.(AuditLogReader); ok {
		return r.AuditLog(ctx)
	}
	return c.Store.Audit(ctx, AuditFilter{})
}

// normalize returns e as it reads back from JSON: Details hold JSON types,
// times lose their monotonic reading.
func normalize(e AuditEntry) (AuditEntry, error) {
	b, err := json.Marshal(e)
	if err != nil {
		return e, fmt.Errorf("checkpoints: audit: %w", err)
	}
	var out AuditEntry
	if err := json.Unmarshal(b, &out); err != nil {
		return e, fmt.Errorf("checkpoints: audit: %w", err)
	}
	return out, nil
}

func macOf(key []byte, e AuditEntry) string {
	l := *e.Chain
	l.MAC = ""
	e.Chain = &l
	b, _ := json.Marshal(e) // a normalized entry always encodes
	m := hmac.New(sha256.New, key)
	m.Write(b)
	return hex.EncodeToString(m.Sum(nil))
}

func validMAC(key []byte, e AuditEntry) bool {
	if e.Chain == nil || e.Chain.MAC == "" {
		return false
	}
	want, err := hex.DecodeString(e.Chain.MAC)
	got, _ := hex.DecodeString(macOf(key, e))
	return err == nil && hmac.Equal(want, got)
}

// frontier is the MACs of the intact entries no intact entry names.
func frontier(all []AuditEntry, key []byte) []string {
	named := map[string]bool{}
	var macs []string
	for _, e := range all {
		if !validMAC(key, e) {
			continue
		}
		macs = append(macs, e.Chain.MAC)
		for _, p := range e.Chain.Prev {
			named[p] = true
		}
	}
	out := []string{}
	for _, m := range macs {
		if !named[m] {
			out = append(out, m)
		}
	}
	sort.Strings(out)
	return out
}

// ChainReport is what VerifyChain found.
type ChainReport struct {
	Entries int `json:"entries"`
	// Unchained counts entries written before the chain began (before
	// audit.hmac_key was set): they cannot be verified.
	Unchained int `json:"unchained"`
	Verified  int `json:"verified"`
	// Head is the frontier: the MACs of the newest entries. Recording it
	// elsewhere lets a later check see that the newest entries are still there.
	Head   []string `json:"head"`
	Breaks []Break  `json:"breaks,omitempty"`
}

// Intact reports a chain with no broken link.
func (r ChainReport) Intact() bool { return len(r.Breaks) == 0 }

// Break is one broken link.
type Break struct {
	Index int        `json:"index"` // position in the order verified
	Kind  string     `json:"kind"`  // forged, unsigned, missing, reordered, duplicate
	Entry AuditEntry `json:"entry"`
	// Missing is the MAC an entry names that no entry has (for missing).
	Missing string `json:"missing,omitempty"`
}

func (b Break) String() string {
	id := ""
	if b.Entry.Chain != nil {
		id = b.Entry.Chain.ID
	}
	s := fmt.Sprintf("%s: entry %d (%s %s by %s, id %s)", b.Kind, b.Index, b.Entry.Time.UTC().Format(time.RFC3339Nano), b.Entry.Action, b.Entry.Actor, id)
	if b.Missing != "" {
		s += " names predecessor " + b.Missing[:16] + "… which is not in the log (deleted)"
	}
	return s
}

// Kinds of Break.
const (
	BreakForged    = "forged"    // the MAC does not check out: written without the key, or altered
	BreakUnsigned  = "unsigned"  // no MAC after the chain began
	BreakMissing   = "missing"   // names a predecessor that is not in the log
	BreakReordered = "reordered" // comes before a predecessor it names
	BreakDuplicate = "duplicate" // the same entry twice (a replayed record)
)

// VerifyChain checks entries, given in the order they were written, against
// key. Entries before the first chained one count as unchained; after it,
// every entry must be chained, intact, unique, and name only predecessors
// that are present and earlier.
func VerifyChain(entries []AuditEntry, key []byte) ChainReport {
	rep := ChainReport{Entries: len(entries), Head: frontier(entries, key)}
	pos := map[string]int{} // MAC → index of intact entries
	for i, e := range entries {
		if validMAC(key, e) {
			if _, dup := pos[e.Chain.MAC]; !dup {
				pos[e.Chain.MAC] = i
			}
		}
	}
	// The chain begins at its oldest entry; unchained entries older than
	// that were written before the key was set. (Read in log order they
	// may still come later: a topic with several partitions kept older
	// entries on all of them.)
	var begin time.Time
	for _, e := range entries {
		if e.Chain != nil && (begin.IsZero() || e.Time.Before(begin)) {
			begin = e.Time
		}
	}
	ids := map[string]bool{}
	for i, e := range entries {
		brk := func(kind, missing string) {
			rep.Breaks = append(rep.Breaks, Break{Index: i, Kind: kind, Entry: e, Missing: missing})
		}
		if e.Chain == nil {
			if begin.IsZero() || e.Time.Before(begin) {
				rep.Unchained++
			} else {
				brk(BreakUnsigned, "")
			}
			continue
		}
		if !validMAC(key, e) {
			brk(BreakForged, "")
			continue
		}
		if ids[e.Chain.ID] {
			brk(BreakDuplicate, "")
			continue
		}
		ids[e.Chain.ID] = true
		ok := true
		for _, p := range e.Chain.Prev {
			j, there := pos[p]
			switch {
			case !there:
				brk(BreakMissing, p)
				ok = false
			case j > i:
				brk(BreakReordered, "")
				ok = false
			}
			if !ok {
				break
			}
		}
		if ok {
			rep.Verified++
		}
	}
	return rep
}

// ParseChainKey reads a key from a secret's text: hex if it is all hex
// digits (openssl rand -hex 32), else the bytes as they are.
func ParseChainKey(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	if b, err := hex.DecodeString(s); err == nil && len(s) >= 2*MinChainKey {
		return b, nil
	}
	if len(s) < MinChainKey {
		return nil, ErrChainKey
	}
	return []byte(s), nil
}
