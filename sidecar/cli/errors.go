package cli

import (
	"errors"
	"fmt"
	"io"
	"strings"
)

// UsageError is a command line the command cannot run: an unknown command or flag, a missing or
// extra argument, a flag value it does not take. Run prints it followed by the command's usage and
// exits with ExitUsage.
type UsageError struct {
	Err error
}

func (e *UsageError) Error() string { return e.Err.Error() }
func (e *UsageError) Unwrap() error { return e.Err }

// usageErrorf is a UsageError saying format.
func usageErrorf(format string, args ...any) error {
	return &UsageError{Err: fmt.Errorf(format, args...)}
}

func isUsage(err error) bool {
	var u *UsageError
	return errors.As(err, &u)
}

// exitCode is the exit code of a command that returned err: ExitOK for nil, ExitUsage for a
// UsageError, ExitFail for any other error.
func exitCode(err error) int {
	switch {
	case err == nil:
		return ExitOK
	case isUsage(err):
		return ExitUsage
	}
	return ExitFail
}

// problems is several problems found at once (an invalid configuration or project, accounts that
// cannot be imported), printed one per line.
type problems struct {
	// intro is the line before the problems; when set, the problems are indented under it.
	intro string
	// where prefixes each problem when there is no intro: the file they are in. Empty means the
	// command ("postern import sasl-xoauth2").
	where string
	errs  []error
	// outro is the line after the problems, such as "nothing was imported".
	outro string
}

func (p *problems) Error() string {
	var b strings.Builder
	p.print(&b, "postern")
	return strings.TrimSuffix(b.String(), "\n")
}

func (p *problems) print(w io.Writer, command string) {
	if p.intro != "" {
		fmt.Fprintln(w, p.intro)
	}
	where := p.where
	if where == "" {
		where = command
	}
	for _, err := range p.errs {
		if p.intro != "" {
			fmt.Fprintf(w, "  %v\n", err)
		} else {
			fmt.Fprintf(w, "%s: %v\n", where, err)
		}
	}
	if p.outro != "" {
		fmt.Fprintln(w, p.outro)
	}
}

func asProblems(err error) (*problems, bool) {
	var p *problems
	ok := errors.As(err, &p)
	return p, ok
}

// errReported is a failure the command has reported already (serve logs why it stopped): Run
// exits with ExitFail and prints nothing more.
var errReported = errors.New("reported")

func isReported(err error) bool { return errors.Is(err, errReported) }

// unjoin splits an errors.Join error into its parts.
func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}
