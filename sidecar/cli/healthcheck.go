package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/postern/postern/sidecar/admin"
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

func runHealthcheck(ctx context.Context, a *App, args []string) int {
	fs := a.newFlagSet("healthcheck", "", healthcheckAbout)
	load := a.configFlag(fs)
	timeout := fs.Duration("timeout", 10*time.Second, "give up after this `duration`")
	if _, code, ok := a.parse(fs, args, 0, 0); !ok {
		return code
	}
	cfg, _, ok := load()
	if !ok {
		return ExitFail
	}
	if cfg.Listen.Admin == "" {
		fmt.Fprintln(a.Stderr, "postern healthcheck: not ready: the admin listener is off (listen.admin is empty)")
		return ExitFail
	}
	url := admin.ProbeURL(cfg.Listen.Admin, cfg.Admin.TLS.On(), "/readyz")
	client, err := admin.ProbeClient(cfg.Admin.TLS.CertFile)
	if err != nil {
		fmt.Fprintf(a.Stderr, "postern healthcheck: %v\n", err)
		return ExitFail
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		fmt.Fprintf(a.Stderr, "postern healthcheck: %v\n", err)
		return ExitFail
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
		fmt.Fprintf(a.Stderr, "postern healthcheck: not ready: cannot reach %s: %v\n", url, err)
		return ExitFail
	}
	defer resp.Body.Close()
	var ready struct {
		Ready  bool `json:"ready"`
		Checks []struct {
			Name     string `json:"name"`
			OK       bool   `json:"ok"`
			Degraded bool   `json:"degraded"`
			Error    string `json:"error"`
		} `json:"checks"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, healthcheckResponseLimit)).Decode(&ready); err != nil {
		fmt.Fprintf(a.Stderr, "postern healthcheck: not ready: %s answered %s, not Postern's readiness: %v\n", url, resp.Status, err)
		return ExitFail
	}
	out, code, verdict := a.Stdout, ExitOK, "ready"
	if resp.StatusCode != http.StatusOK || !ready.Ready {
		out, code, verdict = a.Stderr, ExitFail, "not ready"
	}
	fmt.Fprintf(out, "%s (%s)\n", verdict, url)
	for _, c := range ready.Checks {
		switch {
		case c.OK:
		case c.Degraded:
			fmt.Fprintf(out, "  %s: degraded: %s\n", c.Name, c.Error)
		default:
			fmt.Fprintf(out, "  %s: %s\n", c.Name, c.Error)
		}
	}
	return code
}
