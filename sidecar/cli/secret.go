package cli

import (
	"fmt"
	"io"
	"strings"

	"github.com/postern/postern/sidecar/secret"
)

// maxPasswordBytes bounds what --password-stdin reads.
const maxPasswordBytes = 64 << 10

// password reads a password from standard input, or from the terminal (twice, to catch typing
// mistakes).
func (a *App) password(fromStdin bool, prompt string) (secret.Secret, error) {
	return a.readSecret(fromStdin, "password", "--password-stdin", prompt)
}

// clientSecret reads an OAuth client secret as password reads a password.
func (a *App) clientSecret(fromStdin bool, clientID string) (secret.Secret, error) {
	return a.readSecret(fromStdin, "client secret", "--client-secret-stdin", fmt.Sprintf("Client secret of the app %s: ", clientID))
}

// readSecret reads the secret called what from standard input, or from the terminal (twice);
// stdinFlag is the flag that reads it from standard input.
func (a *App) readSecret(fromStdin bool, what, stdinFlag, prompt string) (secret.Secret, error) {
	if fromStdin {
		b, err := io.ReadAll(io.LimitReader(a.Stdin, maxPasswordBytes+1))
		if err != nil {
			return secret.Secret{}, fmt.Errorf("reading the %s from standard input: %w", what, err)
		}
		if len(b) > maxPasswordBytes {
			return secret.Secret{}, fmt.Errorf("standard input holds more than a %s", what)
		}
		pw := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
		if pw == "" {
			return secret.Secret{}, fmt.Errorf("no %s on standard input", what)
		}
		return secret.New(pw), nil
	}
	if a.ReadPassword == nil {
		return secret.Secret{}, fmt.Errorf("no terminal to ask for the %s: pipe it in with %s", what, stdinFlag)
	}
	pw, err := a.ReadPassword(prompt)
	if err != nil {
		return secret.Secret{}, err
	}
	if pw == "" {
		return secret.Secret{}, fmt.Errorf("the %s is empty", what)
	}
	again, err := a.ReadPassword("Repeat the " + what + ": ")
	if err != nil {
		return secret.Secret{}, err
	}
	if again != pw {
		return secret.Secret{}, fmt.Errorf("the %ss differ", what)
	}
	return secret.New(pw), nil
}
