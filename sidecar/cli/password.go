package cli

import (
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/term"
)

// TerminalPassword returns an App.ReadPassword that shows the prompt on out and reads a line from
// the terminal in without echo. When in is not a terminal it fails, asking for --password-stdin.
func TerminalPassword(in *os.File, out io.Writer) func(prompt string) (string, error) {
	return func(prompt string) (string, error) {
		fd := int(in.Fd())
		if !term.IsTerminal(fd) {
			return "", errors.New("standard input is not a terminal: pipe the password in with --password-stdin")
		}
		fmt.Fprint(out, prompt)
		b, err := term.ReadPassword(fd)
		fmt.Fprintln(out)
		if err != nil {
			return "", fmt.Errorf("reading the password: %w", err)
		}
		return string(b), nil
	}
}
