package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/postern/postern/sidecar/admin"
	"github.com/postern/postern/sidecar/config"
)

const healthcheckAbout = `
Ask the running Postern whether it is ready, for a container's exec health probe or a monitoring
script: GET /readyz on the admin listener of this configuration (listen.admin). Exit 0 when
Postern is ready (a degraded check, such as an unreachable store while cached credentials still
work, is printed but keeps it ready), 1 when it is not or cannot be reached, with the reason.
With admin.tls it speaks HTTPS and trusts exactly the certificate in admin.tls.cert_file (the probe
dials the listen address, which the certificate need not name); a wildcard listen address
(0.0.0.0, [::]) is reached on loopback.`

// healthcheckResponseLimit bounds how much of /readyz's answer is read.
const healthcheckResponseLimit = 1 << 20

// readiness is the admin listener's /readyz answer, and what `healthcheck --json` prints.
type readiness struct {
	URL    string `json:"url"`
	Ready  bool   `json:"ready"`
	Error  string `json:"error,omitempty"` // why it could not be asked
	Checks []struct {
		Name     string `json:"name"`
		OK       bool   `json:"ok"`
		Degraded bool   `json:"degraded"`
		Error    string `json:"error"`
	} `json:"checks"`
}

func (a *App) healthcheckCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "healthcheck",
		Short: "exit 0 if the running Postern is ready, 1 if not (for container health probes)",
		Long:  healthcheckAbout,
		Args:  exactArgs(0),
	}
	load := a.configFlag(cmd)
	timeout := cmd.Flags().Duration("timeout", 10*time.Second, "give up after this `duration`")
	asJSON := jsonFlag(cmd, "the verdict and each check")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		cfg, _, err := load()
		if err != nil {
			return err
		}
		r, err := a.ready(cmd.Context(), cfg, *timeout)
		if *asJSON {
			if err != nil {
				r.Error = err.Error()
			}
			if werr := writeJSON(a.Stdout, r); werr != nil && err == nil {
				return werr
			}
		}
		if err != nil {
			return err
		}
		var lines []error
		for _, c := range r.Checks {
			switch {
			case c.OK:
			case c.Degraded:
				lines = append(lines, fmt.Errorf("%s: degraded: %s", c.Name, c.Error))
			default:
				lines = append(lines, fmt.Errorf("%s: %s", c.Name, c.Error))
			}
		}
		verdict := &problems{intro: fmt.Sprintf("ready (%s)", r.URL), errs: lines}
		if !r.Ready {
			verdict.intro = "not " + verdict.intro
			return verdict
		}
		if !*asJSON {
			verdict.print(a.Stdout, cmd.CommandPath())
		}
		return nil
	}
	return cmd
}

// ready asks the admin listener of cfg whether Postern is ready; r.Ready is false also when the
// listener said so in other words than its JSON.
func (a *App) ready(ctx context.Context, cfg *config.Config, timeout time.Duration) (readiness, error) {
	var r readiness
	if cfg.Listen.Admin == "" {
		return r, errors.New("not ready: the admin listener is off (listen.admin is empty)")
	}
	r.URL = admin.ProbeURL(cfg.Listen.Admin, cfg.Admin.TLS.On(), "/readyz")
	client, err := admin.ProbeClient(cfg.Admin.TLS.CertFile)
	if err != nil {
		return r, err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.URL, nil)
	if err != nil {
		return r, err
	}
	// The reasons of a failing check are shown to a holder of the read token; readiness itself is
	// not, so a probe that cannot read the token still gets the verdict.
	if f := cfg.Admin.ReadTokenFile; f != "" {
		if b, err := os.ReadFile(f); err == nil {
			req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(b)))
		}
	}
	resp, err := client.Do(req)
	if err != nil {
		return r, fmt.Errorf("not ready: cannot reach %s: %w", r.URL, err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(io.LimitReader(resp.Body, healthcheckResponseLimit)).Decode(&r); err != nil {
		r.Ready = false
		return r, fmt.Errorf("not ready: %s answered %s, not Postern's readiness: %w", r.URL, resp.Status, err)
	}
	if resp.StatusCode != http.StatusOK {
		r.Ready = false
	}
	return r, nil
}
