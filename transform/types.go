package transform

import (
	"fmt"
	"strconv"
	"strings"
)

type kind uint8

const (
	kText kind = iota + 1
	kInt
	kBigint
	kSmallint
	kVarint
	kDouble
	kFloat
	kBoolean
	kTimestamp
	kDecimal
	kUUID
	kBlob
	kList
	kSet
	kMap
	kUDT
	kTinyint
	kDate
	kTime
	kInet
	kDuration
	kTuple
	kVector
)

var scalarKinds = map[string]kind{
	"text": kText, "varchar": kText, "ascii": kText, "int": kInt, "bigint": kBigint, "smallint": kSmallint,
	"varint": kVarint, "double": kDouble, "float": kFloat, "boolean": kBoolean, "timestamp": kTimestamp,
	"decimal": kDecimal, "uuid": kUUID, "timeuuid": kUUID, "blob": kBlob, "tinyint": kTinyint, "date": kDate,
	"time": kTime, "inet": kInet, "duration": kDuration,
}

// cqlType is a parsed CQL type.
type cqlType struct {
	kind   kind
	name   string // as spelled by system_schema
	elem   *cqlType
	key    *cqlType
	elems  []*cqlType // tuple components
	dim    int        // vector dimensions
	udt    string
	frozen bool
}

func (t *cqlType) String() string { return t.name }

// parseType parses a CQL type such as "map<text, frozen<list<int>>>".
func parseType(s string) (*cqlType, error) {
	p := &typeParser{s: strings.ToLower(strings.TrimSpace(s))}
	t, err := p.parse()
	if err != nil {
		return nil, fmt.Errorf("type %q: %w", s, err)
	}
	if p.i != len(p.s) {
		return nil, fmt.Errorf("type %q: trailing %q", s, p.s[p.i:])
	}
	return t, nil
}

type typeParser struct {
	s string
	i int
}

func (p *typeParser) word() string {
	for p.i < len(p.s) && p.s[p.i] == ' ' {
		p.i++
	}
	start := p.i
	for p.i < len(p.s) && (p.s[p.i] == '_' || p.s[p.i] >= 'a' && p.s[p.i] <= 'z' || p.s[p.i] >= '0' && p.s[p.i] <= '9') {
		p.i++
	}
	return p.s[start:p.i]
}

func (p *typeParser) expect(c byte) error {
	for p.i < len(p.s) && p.s[p.i] == ' ' {
		p.i++
	}
	if p.i >= len(p.s) || p.s[p.i] != c {
		return fmt.Errorf("expected %q at %d", c, p.i)
	}
	p.i++
	return nil
}

func (p *typeParser) parse() (*cqlType, error) {
	w := p.word()
	if k, ok := scalarKinds[w]; ok {
		return &cqlType{kind: k, name: w}, nil
	}
	switch w {
	case "list", "set", "frozen":
		if err := p.expect('<'); err != nil {
			return nil, err
		}
		inner, err := p.parse()
		if err != nil {
			return nil, err
		}
		if err := p.expect('>'); err != nil {
			return nil, err
		}
		if w == "frozen" {
			c := *inner
			c.frozen = true
			c.name = "frozen<" + inner.name + ">"
			return &c, nil
		}
		k := kList
		if w == "set" {
			k = kSet
		}
		return &cqlType{kind: k, elem: inner, name: w + "<" + inner.name + ">"}, nil
	case "map":
		if err := p.expect('<'); err != nil {
			return nil, err
		}
		key, err := p.parse()
		if err != nil {
			return nil, err
		}
		if err := p.expect(','); err != nil {
			return nil, err
		}
		val, err := p.parse()
		if err != nil {
			return nil, err
		}
		if err := p.expect('>'); err != nil {
			return nil, err
		}
		if key.kind != kText {
			return nil, fmt.Errorf("map keys must be text (document field names)")
		}
		return &cqlType{kind: kMap, key: key, elem: val, name: "map<" + key.name + ", " + val.name + ">"}, nil
	case "tuple":
		return p.tuple()
	case "vector":
		return p.vector()
	case "":
		return nil, fmt.Errorf("missing type name at %d", p.i)
	default:
		// Anything else names a user-defined type; it must be frozen to be a
		// whole-value column, which the caller checks.
		return &cqlType{kind: kUDT, udt: w, name: w}, nil
	}
}

// tuple parses the rest of "tuple<T1, T2, ...>". A tuple is one cell, always
// frozen, and so is every component, whatever it is spelled as.
func (p *typeParser) tuple() (*cqlType, error) {
	if err := p.expect('<'); err != nil {
		return nil, err
	}
	t := &cqlType{kind: kTuple, frozen: true}
	var names []string
	for {
		e, err := p.parse()
		if err != nil {
			return nil, err
		}
		if e.kind == kUDT {
			// A UDT needs its fields declared, which a tuple component cannot.
			return nil, fmt.Errorf("tuple component %s: the transform writes no user-defined type inside a tuple", e.udt)
		}
		t.elems = append(t.elems, e)
		names = append(names, e.name)
		if p.peek() != ',' {
			break
		}
		p.i++
	}
	if err := p.expect('>'); err != nil {
		return nil, err
	}
	t.name = "tuple<" + strings.Join(names, ", ") + ">"
	return t, nil
}

// vector parses the rest of "vector<T, n>" (Cassandra 5.0).
func (p *typeParser) vector() (*cqlType, error) {
	if err := p.expect('<'); err != nil {
		return nil, err
	}
	e, err := p.parse()
	if err != nil {
		return nil, err
	}
	switch e.kind {
	case kList, kSet, kMap, kUDT, kTuple, kVector, kDuration:
		// Cassandra accepts more, but the transform writes vectors of scalars:
		// what vector search and embeddings use.
		return nil, fmt.Errorf("vector of %s: the transform writes vectors of scalar types", e.name)
	}
	if err := p.expect(','); err != nil {
		return nil, err
	}
	w := p.word()
	n, err := strconv.Atoi(w)
	if err != nil || n <= 0 {
		return nil, fmt.Errorf("vector dimension %q is not a positive integer", w)
	}
	if err := p.expect('>'); err != nil {
		return nil, err
	}
	return &cqlType{kind: kVector, elem: e, dim: n, frozen: true,
		name: "vector<" + e.name + ", " + strconv.Itoa(n) + ">"}, nil
}

func (p *typeParser) peek() byte {
	for p.i < len(p.s) && p.s[p.i] == ' ' {
		p.i++
	}
	if p.i >= len(p.s) {
		return 0
	}
	return p.s[p.i]
}
