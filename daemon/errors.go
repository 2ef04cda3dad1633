package daemon

import (
	"errors"
	"fmt"
	"net/http"
)

// Kinds of failure a request can end in. Domain functions wrap them (with
// invalidf and friends) and say nothing of HTTP; StatusOf maps them to a
// status code in the handler.
var (
	errInvalid  = errors.New("invalid request")      // 400: the request cannot be carried out as given
	errNotFound = errors.New("not found")            // 404: it names something that does not exist
	errConflict = errors.New("refused by the state") // 409: the current state forbids it
)

// kindError is a message for the operator that is also one of the kinds
// above: its text stays the message alone.
type kindError struct {
	kind error
	msg  string
}

func (e *kindError) Error() string        { return e.msg }
func (e *kindError) Is(target error) bool { return target == e.kind }

func invalidf(format string, args ...any) error {
	return &kindError{kind: errInvalid, msg: fmt.Sprintf(format, args...)}
}

func notFoundf(format string, args ...any) error {
	return &kindError{kind: errNotFound, msg: fmt.Sprintf(format, args...)}
}

func conflictf(format string, args ...any) error {
	return &kindError{kind: errConflict, msg: fmt.Sprintf(format, args...)}
}

// StatusOf maps an error of a request to its HTTP status: 500 for anything
// that is not one of the request's own kinds.
func StatusOf(err error) int {
	switch {
	case errors.Is(err, errInvalid):
		return http.StatusBadRequest
	case errors.Is(err, errNotFound):
		return http.StatusNotFound
	case errors.Is(err, errConflict):
		return http.StatusConflict
	default:
		return http.StatusInternalServerError
	}
}

// SetupError is a problem of the configuration or the spec found as the
// daemon starts (an unreadable tokens file, a spec that does not load or
// does not fit the target tables): a person must fix it; restarting does
// not.
type SetupError struct{ Err error }

func (e *SetupError) Error() string { return e.Err.Error() }
func (e *SetupError) Unwrap() error { return e.Err }
