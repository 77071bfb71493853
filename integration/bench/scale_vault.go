package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/postern/postern/integration/harness"
	"github.com/postern/postern/sidecar/store/vaultstore"
	"github.com/postern/postern/vault"
)

// VaultScaleOptions configure RunScaleVault.
type VaultScaleOptions struct {
	// Bin is the postern binary.
	Bin string
	// Projects is the number of projects written to Vault.
	Projects int
	// FullScanInterval is store.vault.full_scan_interval: the run waits for one full scan after
	// start-up, so it lasts at least this long.
	FullScanInterval time.Duration
}

// VaultScaleResult is what Postern costs, and what it costs Vault, with many projects in Vault.
type VaultScaleResult struct {
	Projects int `json:"projects"`
	// WriteSeconds is how long vaultstore.PutProjects took to write them (an administrator's
	// import, not Postern's cost).
	WriteSeconds float64 `json:"write_seconds"`
	// StartupSeconds: from exec of postern serve until /readyz answered 200 with every project;
	// StartupRequests is the requests Postern made to Vault in that time.
	StartupSeconds  float64 `json:"startup_seconds"`
	StartupRequests int     `json:"startup_requests"`
	// RSSMB is VmRSS once ready; AfterScanRSSMB after the full scan; PeakRSSMB is VmHWM then.
	RSSMB          float64 `json:"rss_mb"`
	AfterScanRSSMB float64 `json:"after_scan_rss_mb"`
	PeakRSSMB      float64 `json:"peak_rss_mb"`
	// FullScanIntervalSeconds is the configured interval of the full scans.
	FullScanIntervalSeconds float64 `json:"full_scan_interval_seconds"`
	// FullScanSeconds is the time from the first to the last metadata read of the first full scan
	// after start-up; FullScanRequests the requests from its first to its last (metadata reads,
	// and any quick poll between), FullScanRecordReads the project records it read again.
	FullScanSeconds     float64 `json:"full_scan_seconds"`
	FullScanRequests    int     `json:"full_scan_requests"`
	FullScanRecordReads int     `json:"full_scan_record_reads"`
	// WindowSeconds runs from ready to the end of that full scan; WindowCPUSeconds is the CPU
	// Postern used in it, WindowRequests the requests it made to Vault.
	WindowSeconds    float64 `json:"window_seconds"`
	WindowCPUSeconds float64 `json:"window_cpu_seconds"`
	WindowRequests   int     `json:"window_requests"`
}

const (
	metadataPrefix = "GET secret/metadata/postern/projects/"
	recordPrefix   = "GET secret/data/postern/projects/"
)

// RunScaleVault writes opts.Projects projects into a Vault dev server, starts Postern on them
// through a counting proxy, and measures its start-up, its memory, and one full scan.
func RunScaleVault(r harness.T, opts VaultScaleOptions) VaultScaleResult {
	r.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	res := VaultScaleResult{Projects: opts.Projects, FullScanIntervalSeconds: opts.FullScanInterval.Seconds()}
	v := harness.StartVault(r)
	proxy := harness.StartVaultProxy(r, v)

	st, err := vaultstore.Open(ctx, vault.Options{Address: v.Addr, Auth: vault.Auth{Token: vault.Secret(v.RootToken)}}, vaultstore.Options{})
	if err != nil {
		r.Fatalf("%v", err)
	}
	began := time.Now()
	if _, err := st.PutProjects(ctx, scaleProjects(opts.Projects)); err != nil {
		r.Fatalf("writing %d projects to Vault: %v", opts.Projects, err)
	}
	res.WriteSeconds = time.Since(began).Seconds()
	st.Close()
	r.Logf("wrote %d projects to Vault in %.1fs", opts.Projects, res.WriteSeconds)

	dir := harness.TempDir(r)
	tokenFile := filepath.Join(dir, "vault-token")
	if err := os.WriteFile(tokenFile, []byte(v.RootToken+"\n"), 0o600); err != nil {
		r.Fatalf("%v", err)
	}
	began = time.Now()
	p, startup := startScalePostern(ctx, r, opts.Bin, filepath.Join(dir, "postern"),
		fmt.Sprintf("  vault:\n    address: %s\n    full_scan_interval: %s\n    auth:\n      token_file: %s",
			proxy.Addr, opts.FullScanInterval, tokenFile), opts.Projects)
	ready := time.Now()
	res.StartupSeconds = startup.Seconds()
	res.StartupRequests = len(proxy.Requests(began))
	pid := p.PID()
	cpu0, _ := procCPU(pid)
	rss, err := harness.ProcStatusKB(pid, "VmRSS")
	if err != nil {
		r.Fatalf("%v", err)
	}
	res.RSSMB = float64(rss) / 1024
	r.Logf("start-up %.2fs (%d requests to Vault), RSS %.1f MB; waiting for the next full scan (every %s)",
		res.StartupSeconds, res.StartupRequests, res.RSSMB, opts.FullScanInterval)

	// The next full scan reads the metadata of every project.
	var scan []harness.ProxiedRequest
	err = pollUntil(ctx, 100*time.Millisecond, func() bool {
		scan = proxy.Requests(ready)
		n := 0
		for _, q := range scan {
			if strings.HasPrefix(q.Key, metadataPrefix) {
				n++
			}
		}
		return n >= opts.Projects
	})
	if err != nil {
		r.Fatalf("waiting for a full scan of %d projects: %v\n%s", opts.Projects, err, p.Log())
	}
	end := time.Now()
	cpu1, _ := procCPU(pid)
	res.WindowSeconds, res.WindowCPUSeconds, res.WindowRequests = end.Sub(ready).Seconds(), cpu1-cpu0, len(scan)
	first, last := -1, -1
	for i, q := range scan {
		if strings.HasPrefix(q.Key, metadataPrefix) {
			if first < 0 {
				first = i
			}
			last = i
		}
	}
	res.FullScanSeconds = scan[last].At.Sub(scan[first].At).Seconds()
	res.FullScanRequests = last - first + 1
	for _, q := range scan {
		if strings.HasPrefix(q.Key, recordPrefix) {
			res.FullScanRecordReads++
		}
	}
	if rss, err = harness.ProcStatusKB(pid, "VmRSS"); err != nil {
		r.Fatalf("%v", err)
	}
	hwm, err := harness.ProcStatusKB(pid, "VmHWM")
	if err != nil {
		r.Fatalf("%v", err)
	}
	res.AfterScanRSSMB, res.PeakRSSMB = float64(rss)/1024, float64(hwm)/1024
	return res
}

// waitProjects waits until p is ready with n projects loaded.
func waitProjects(ctx context.Context, p *harness.Postern, n int) error {
	want := float64(n)
	return pollUntil(ctx, 10*time.Millisecond, func() bool {
		if _, err := p.Get(ctx, "/readyz"); err != nil {
			return false
		}
		m, err := p.Get(ctx, "/metrics")
		if err != nil {
			return false
		}
		got, ok := harness.MetricValue(m, "postern_projects")
		return ok && got == want
	})
}
