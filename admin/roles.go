package admin

import (
	"bufio"
	"crypto/subtle"
	"fmt"
	"os"
	"strings"
)

// Role is what a token may do. Roles are ordered: each may do everything the
// one below it may.
type Role int

const (
	// RoleNone is an unauthenticated caller.
	RoleNone Role = iota
	// RoleViewer reads: status, audit, reports, plan, metrics, the status page.
	RoleViewer
	// RoleOperator also steers the pipeline without moving data backwards:
	// pause, resume, backfill, reconcile, repair, plan advance and resume.
	RoleOperator
	// RoleAdmin may do anything, including what replays or undoes work:
	// rewind, rollback, abort, drills, and every mutating route not given a
	// lower role.
	RoleAdmin
)

var roleNames = map[Role]string{RoleNone: "none", RoleViewer: "viewer", RoleOperator: "operator", RoleAdmin: "admin"}

func (r Role) String() string {
	if n, ok := roleNames[r]; ok {
		return n
	}
	return fmt.Sprintf("role(%d)", int(r))
}

// MarshalText writes the role's name, for JSON answers.
func (r Role) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// UnmarshalText reads a role's name.
func (r *Role) UnmarshalText(b []byte) error {
	if string(b) == "none" {
		*r = RoleNone
		return nil
	}
	v, err := ParseRole(string(b))
	*r = v
	return err
}

// ParseRole reads viewer, operator or admin.
func ParseRole(s string) (Role, error) {
	for r, n := range roleNames {
		if r != RoleNone && n == s {
			return r, nil
		}
	}
	return RoleNone, fmt.Errorf("unknown role %q (viewer, operator, admin)", s)
}

// Tokens maps token values to their names. Names go to the audit log; token
// values never leave this process.
type Tokens map[string]string

// Roles maps token names to their roles.
type Roles map[string]Role

// TokenFile is a parsed tokens file.
type TokenFile struct {
	Tokens Tokens
	Roles  Roles
	// Unroled names the lines written before roles existed ("name:token").
	// They get RoleAdmin, what every token could do then, so an upgrade
	// changes nothing; the daemon logs a deprecation warning for each.
	Unroled []string
}

// LoadTokens reads the tokens file and returns its tokens, without roles.
func LoadTokens(path string) (Tokens, error) {
	tf, err := LoadTokenFile(path)
	return tf.Tokens, err
}

// LoadTokenFile reads "name:token:role" lines (role viewer, operator or
// admin; "name:token" is read as admin, see TokenFile.Unroled). Blank lines
// and # comments are skipped. Tokens are 16+ characters without ':'.
func LoadTokenFile(path string) (TokenFile, error) {
	tf := TokenFile{Tokens: Tokens{}, Roles: Roles{}}
	f, err := os.Open(path)
	if err != nil {
		return tf, fmt.Errorf("admin: tokens file: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		bad := func(why string) error {
			return fmt.Errorf("admin: tokens file %s line %d: %s; want name:token:role, a token of 16+ characters, role viewer, operator or admin", path, n, why)
		}
		fields := strings.Split(line, ":")
		for i := range fields {
			fields[i] = strings.TrimSpace(fields[i])
		}
		if len(fields) < 2 || len(fields) > 3 || fields[0] == "" || len(fields[1]) < 16 {
			return tf, bad("malformed line")
		}
		name, tok := fields[0], fields[1]
		role := RoleAdmin
		if len(fields) == 3 {
			if role, err = ParseRole(fields[2]); err != nil {
				return tf, bad(err.Error())
			}
		} else {
			tf.Unroled = append(tf.Unroled, name)
		}
		if prev, dup := tf.Roles[name]; dup && prev != role {
			return tf, bad(fmt.Sprintf("%s already has role %s", name, prev))
		}
		if _, dup := tf.Tokens[tok]; dup {
			return tf, bad("this token is already listed; give each its own")
		}
		tf.Tokens[tok] = name
		tf.Roles[name] = role
	}
	return tf, sc.Err()
}

// name returns the token's name, comparing in constant time.
func (t Tokens) name(presented string) (string, bool) {
	found, name := 0, ""
	for tok, n := range t {
		if subtle.ConstantTimeCompare([]byte(tok), []byte(presented)) == 1 {
			found, name = 1, n
		}
	}
	return name, found == 1
}
