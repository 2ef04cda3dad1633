package transform

import (
	"fmt"
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
)

var scalarKinds = map[string]kind{
	"text": kText, "varchar": kText, "ascii": kText, "int": kInt, "bigint": kBigint, "smallint": kSmallint,
	"varint": kVarint, "double": kDouble, "float": kFloat, "boolean": kBoolean, "timestamp": kTimestamp,
	"decimal": kDecimal, "uuid": kUUID, "timeuuid": kUUID, "blob": kBlob,
}

// cqlType is a parsed CQL type.
type cqlType struct {
	kind   kind
	name   string // as spelled by system_schema
	elem   *cqlType
	key    *cqlType
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
	case "":
		return nil, fmt.Errorf("missing type name at %d", p.i)
	default:
		// Anything else names a user-defined type; it must be frozen to be a
		// whole-value column, which the caller checks.
		return &cqlType{kind: kUDT, udt: w, name: w}, nil
	}
}
