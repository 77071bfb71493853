package bench

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Results is everything one run measured; it is written as JSON.
type Results struct {
	Started      time.Time `json:"started"`
	TotalSeconds float64   `json:"total_seconds"`
	Machine      Machine   `json:"machine"`
	Config       Config    `json:"config"`
	// Cells are every end-to-end measurement, in the order they ran.
	Cells []Cell `json:"cells"`
	// DistantCells are the measurements with a distant upstream and many projects (distant.go).
	DistantCells []DistantCell `json:"distant_cells,omitempty"`
	// Summary is one row per message size and concurrency: each path's median rate over the
	// rounds and the ratios.
	Summary []Row          `json:"summary"`
	Sink    []SinkLoad     `json:"sink_alone"`
	XOAUTH2 *XOAUTH2Result `json:"xoauth2,omitempty"`
	Store   StoreReads     `json:"store_reads"`
	Scale   *ScaleResult   `json:"scale,omitempty"`
	// ScaleLarge is the same with Options.LargeProjects projects (100,000 by default).
	ScaleLarge *ScaleResult `json:"scale_large,omitempty"`
	// ScaleVault is the same number of projects in Vault (with -vault).
	ScaleVault *VaultScaleResult `json:"scale_vault,omitempty"`
	GoBench    []GoBench         `json:"go_benchmarks,omitempty"`
	// Profiles are CPU profiles of Postern under load (path A), beside results.json.
	Profiles []Profile `json:"postern_profiles,omitempty"`
	// Added is Postern's added latency per message on loopback, by message size (added.go).
	Added   []AddedLatency `json:"added_latency,omitempty"`
	Targets []Target       `json:"targets"`
}

// Machine describes where the run happened.
type Machine struct {
	CPUs    int    `json:"cpus"`
	Postfix string `json:"postfix"`
	Go      string `json:"go"`
	Kernel  string `json:"kernel"`
}

// Config is what was asked for.
type Config struct {
	Sizes  []int       `json:"sizes_bytes"`
	Steps  []int       `json:"concurrency_steps"`
	Rounds int         `json:"rounds"`
	Counts map[int]int `json:"messages_per_cell_by_size"`
	// CountsAtOne are the messages per cell at concurrency 1 (fewer: the direct path is slow).
	CountsAtOne map[int]int `json:"messages_per_cell_at_concurrency_1_by_size"`
}

// Row is one cell of the summary: a size and concurrency on loopback with one project, or a
// round-trip time and a number of projects (the distant cells, at Postfix's 100 slots).
type Row struct {
	Size        int     `json:"size_bytes"`
	Concurrency int     `json:"concurrency"`
	RTTms       float64 `json:"rtt_ms"`
	Projects    int     `json:"projects"`
	Postern     float64 `json:"postern_msgs_per_sec"`
	Direct      float64 `json:"direct_msgs_per_sec"`
	// DirectFull is path B without the TLS session cache (B-full).
	DirectFull float64 `json:"direct_full_msgs_per_sec"`
	Plain      float64 `json:"plain_msgs_per_sec"`
	// The rates are medians over the rounds. AOverB is the median over the rounds of Postern /
	// direct in that round; AOverPlain the same of Postern / plain.
	AOverB     float64 `json:"a_over_b"`
	AOverBFull float64 `json:"a_over_b_full"`
	AOverPlain float64 `json:"a_over_plain"`
	// CPUBusy is the median machine CPU use during the Postern cells; PosternCPUPerMsg is
	// Postern's own CPU time per message in milliseconds (median).
	CPUBusyPostern   float64 `json:"cpu_busy_postern"`
	PosternCPUPerMsg float64 `json:"postern_cpu_ms_per_msg"`
	// Distant rows only (DistantCell): Postfix's queue delay (delays= a+b) p50/p99 in seconds,
	// the sink's connections per delivered message, the sign-ins refused with 421 4.3.2, and the
	// share of the submitted messages delivered within DistantCellLimit; A, then B.
	QueueP50A    float64 `json:"queue_delay_p50_s_a,omitempty"`
	QueueP99A    float64 `json:"queue_delay_p99_s_a,omitempty"`
	QueueP50B    float64 `json:"queue_delay_p50_s_b,omitempty"`
	QueueP99B    float64 `json:"queue_delay_p99_s_b,omitempty"`
	DelayP99A    float64 `json:"delay_p99_s_a,omitempty"`
	DelayP99B    float64 `json:"delay_p99_s_b,omitempty"`
	ConnsPerMsgA float64 `json:"conns_per_msg_a,omitempty"`
	ConnsPerMsgB float64 `json:"conns_per_msg_b,omitempty"`
	RefusedA     int64   `json:"refused_421_a"`
	RefusedB     int64   `json:"refused_421_b"`
	DeliveredA   float64 `json:"delivered_share_a,omitempty"`
	DeliveredB   float64 `json:"delivered_share_b,omitempty"`
	// SlotsMeanA/B and SlotsMaxA/B are Postfix's slots busy: its delivery agents delivering a
	// message (slots.go), the mean and the largest of the samples.
	SlotsMeanA float64 `json:"slots_busy_mean_a,omitempty"`
	SlotsMeanB float64 `json:"slots_busy_mean_b,omitempty"`
	SlotsMaxA  float64 `json:"slots_busy_max_a,omitempty"`
	SlotsMaxB  float64 `json:"slots_busy_max_b,omitempty"`
}

// StoreReads relates Postern's store reads (postern_store_project_reads_total) to the messages
// it delivered during the end-to-end cells.
type StoreReads struct {
	// Reads is the growth of the counter from the first to the last cell, over Seconds.
	Reads          int64   `json:"reads"`
	Seconds        float64 `json:"seconds"`
	ReloadInterval float64 `json:"reload_interval_seconds"`
	// PosternReads were counted during the cells of path A, which lasted PosternSeconds and
	// delivered Deliveries messages; Periodic is the most reload_interval alone makes in those
	// cells (one per started interval of each cell).
	PosternReads   int64   `json:"postern_cell_reads"`
	PosternSeconds float64 `json:"postern_cell_seconds"`
	Periodic       int64   `json:"postern_cell_periodic_allowance"`
	Deliveries     int64   `json:"postern_messages"`
	// PerMessage is PosternReads / Deliveries; ExtraPerMessage counts only reads beyond Periodic.
	PerMessage      float64 `json:"per_message"`
	ExtraPerMessage float64 `json:"extra_per_message"`
	// OtherReads were counted during the cells of the other paths, whose OtherMessages Postfix
	// looked up in Postern's socketmap (and got NOTFOUND).
	OtherReads    int64 `json:"other_cell_reads"`
	OtherMessages int64 `json:"other_messages"`
	// Store is "vault" or "file". With Vault, VaultRequests are Postern's requests to it during
	// the path-A cells by method and path, and VaultRecordReads those of them that read a project
	// or token record (what a delivery would read); the rest is the index poll every
	// reload_interval, the periodic full scan and the token's own upkeep.
	Store            string         `json:"store"`
	VaultRequests    map[string]int `json:"vault_requests,omitempty"`
	VaultRecordReads int            `json:"vault_record_reads"`
}

// GoBench is one Go benchmark's median over its runs.
type GoBench struct {
	Name        string  `json:"name"`
	Runs        int     `json:"runs"`
	NsPerOp     float64 `json:"ns_per_op"`
	BytesPerOp  float64 `json:"bytes_per_op"`
	AllocsPerOp float64 `json:"allocs_per_op"`
}

// Target is one goal of the issue and whether this run met it.
type Target struct {
	Name  string `json:"name"`
	Goal  string `json:"goal"`
	Value string `json:"value"`
	Met   bool   `json:"met"`
}

// Summarize fills Summary from Cells: per size and concurrency, the median over the rounds of
// each path's rate and of the ratios within each round (the paths of a round run back to back,
// so a round's ratio is not disturbed by what the machine did during another round).
func (res *Results) Summarize() {
	type key struct{ size, conc int }
	type roundKey struct {
		key
		round int
	}
	rates := map[key]map[string][]float64{}
	byRound := map[roundKey]map[string]float64{}
	cpu := map[key][]float64{}
	per := map[key][]float64{}
	var keys []key
	for _, c := range res.Cells {
		if c.Round == 0 || c.Path == PathXOAUTH2 {
			continue
		}
		k := key{c.Size, c.Concurrency}
		if rates[k] == nil {
			rates[k] = map[string][]float64{}
			keys = append(keys, k)
		}
		rates[k][c.Path] = append(rates[k][c.Path], c.Rate)
		rk := roundKey{k, c.Round}
		if byRound[rk] == nil {
			byRound[rk] = map[string]float64{}
		}
		byRound[rk][c.Path] = c.Rate
		if c.Path == PathPostern {
			cpu[k] = append(cpu[k], c.CPUBusy)
			per[k] = append(per[k], 1000*c.PosternCPUSeconds/float64(c.Count))
		}
	}
	slices.SortFunc(keys, func(a, b key) int {
		if a.size != b.size {
			return a.size - b.size
		}
		return a.conc - b.conc
	})
	res.Summary = nil
	for _, k := range keys {
		r := Row{Size: k.size, Concurrency: k.conc, Projects: 1,
			Postern: median(rates[k][PathPostern]), Direct: median(rates[k][PathDirect]), Plain: median(rates[k][PathPlain]),
			DirectFull:     median(rates[k][PathDirectFull]),
			CPUBusyPostern: median(cpu[k]), PosternCPUPerMsg: median(per[k])}
		var ab, abf, ap []float64
		for rk, paths := range byRound {
			if rk.key != k || paths[PathPostern] == 0 {
				continue
			}
			if d := paths[PathDirect]; d > 0 {
				ab = append(ab, paths[PathPostern]/d)
			}
			if d := paths[PathDirectFull]; d > 0 {
				abf = append(abf, paths[PathPostern]/d)
			}
			if p := paths[PathPlain]; p > 0 {
				ap = append(ap, paths[PathPostern]/p)
			}
		}
		r.AOverB, r.AOverBFull, r.AOverPlain = median(ab), median(abf), median(ap)
		res.Summary = append(res.Summary, r)
	}
	res.summarizeDistant()
}

// summarizeDistant adds a row per size, round-trip time and number of projects of the distant
// cells: the median over rounds of each value.
func (res *Results) summarizeDistant() {
	type key struct {
		size     int
		rtt      float64
		projects int
	}
	cells := map[key]map[string][]DistantCell{}
	var keys []key
	for _, c := range res.DistantCells {
		k := key{c.Size, c.RTTms, c.Projects}
		if cells[k] == nil {
			cells[k] = map[string][]DistantCell{}
			keys = append(keys, k)
		}
		cells[k][c.Path] = append(cells[k][c.Path], c)
	}
	slices.SortFunc(keys, func(a, b key) int {
		switch {
		case a.size != b.size:
			return a.size - b.size
		case a.rtt != b.rtt:
			return int(a.rtt - b.rtt)
		}
		return a.projects - b.projects
	})
	med := func(cs []DistantCell, f func(DistantCell) float64) float64 {
		var xs []float64
		for _, c := range cs {
			xs = append(xs, f(c))
		}
		return median(xs)
	}
	for _, k := range keys {
		a, b := cells[k][PathDistantA], cells[k][PathDistantB]
		r := Row{Size: k.size, Concurrency: 100, RTTms: k.rtt, Projects: k.projects,
			Postern: med(a, func(c DistantCell) float64 { return c.Rate }), Direct: med(b, func(c DistantCell) float64 { return c.Rate }),
			PosternCPUPerMsg: med(a, func(c DistantCell) float64 { return c.PosternCPUms }),
			QueueP50A:        med(a, func(c DistantCell) float64 { return c.QueueP50 }), QueueP99A: med(a, func(c DistantCell) float64 { return c.QueueP99 }),
			QueueP50B: med(b, func(c DistantCell) float64 { return c.QueueP50 }), QueueP99B: med(b, func(c DistantCell) float64 { return c.QueueP99 }),
			DelayP99A: med(a, func(c DistantCell) float64 { return c.DelayP99 }), DelayP99B: med(b, func(c DistantCell) float64 { return c.DelayP99 }),
			ConnsPerMsgA: med(a, func(c DistantCell) float64 { return c.ConnsPerMsg }), ConnsPerMsgB: med(b, func(c DistantCell) float64 { return c.ConnsPerMsg }),
			RefusedA:   int64(med(a, func(c DistantCell) float64 { return float64(c.Refused) })),
			RefusedB:   int64(med(b, func(c DistantCell) float64 { return float64(c.Refused) })),
			DeliveredA: med(a, func(c DistantCell) float64 { return float64(c.Delivered) / float64(c.Count) }),
			DeliveredB: med(b, func(c DistantCell) float64 { return float64(c.Delivered) / float64(c.Count) }),
			SlotsMeanA: med(a, func(c DistantCell) float64 { return c.SlotsBusyMean }), SlotsMeanB: med(b, func(c DistantCell) float64 { return c.SlotsBusyMean }),
			SlotsMaxA: med(a, func(c DistantCell) float64 { return float64(c.SlotsBusyMax) }), SlotsMaxB: med(b, func(c DistantCell) float64 { return float64(c.SlotsBusyMax) }),
		}
		if r.Direct > 0 {
			r.AOverB = r.Postern / r.Direct
		}
		res.Summary = append(res.Summary, r)
	}
}

// median is the middle value of xs (the mean of the two middle ones for an even count), 0 for
// none.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(xs))
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// Evaluate fills Targets from the measurements.
func (res *Results) Evaluate() {
	res.Targets = nil
	minAB, minAP := 0.0, 0.0
	loopback := slices.DeleteFunc(slices.Clone(res.Summary), func(r Row) bool { return r.DeliveredA > 0 || r.DeliveredB > 0 })
	for i, r := range loopback {
		if i == 0 || r.AOverB < minAB {
			minAB = r.AOverB
		}
		if i == 0 || r.AOverPlain < minAP {
			minAP = r.AOverPlain
		}
	}
	var ab, abf, ceiling, ap []string
	for _, r := range loopback {
		cell := fmt.Sprintf("%s c%d", sizeLabel(r.Size), r.Concurrency)
		ab = append(ab, fmt.Sprintf("%s %.2f", cell, r.AOverB))
		abf = append(abf, fmt.Sprintf("%s %.2f", cell, r.AOverBFull))
		if r.Direct > 0 {
			ceiling = append(ceiling, fmt.Sprintf("%s %.2f", cell, r.Plain/r.Direct))
		}
		ap = append(ap, fmt.Sprintf("%s %.2f", cell, r.AOverPlain))
	}
	if len(loopback) > 0 {
		res.Targets = append(res.Targets,
			Target{Name: "A/B (STARTTLS+AUTH upstream)", Goal: ">= 4 in every cell",
				Value: fmt.Sprintf("min %.2f (%s); against B-full, without the TLS session cache: %s; plain/B, what a relay costing nothing would reach: %s",
					minAB, strings.Join(ab, ", "), strings.Join(abf, ", "), strings.Join(ceiling, ", ")),
				Met: len(loopback) > 0 && minAB >= 4},
			Target{Name: "A / Postfix plain relay", Goal: ">= 0.9 in every cell", Value: fmt.Sprintf("min %.2f (%s)", minAP, strings.Join(ap, ", ")), Met: len(loopback) > 0 && minAP >= 0.9},
		)
	}
	var added []string
	maxAdded := 0.0
	for _, a := range res.Added {
		added = append(added, fmt.Sprintf("%s p50 %.0f µs, p99 %.0f µs", sizeLabel(a.Size), a.P50Micro, a.P99Micro))
		maxAdded = max(maxAdded, a.P99Micro)
	}
	if len(added) > 0 {
		res.Targets = append(res.Targets, Target{Name: "Postern's added latency per message on loopback (its delivery log against the sink's own time, concurrency 1)",
			Goal: "p99 <= 2 ms", Value: strings.Join(added, "; "), Met: maxAdded <= 2000})
	}
	for _, r := range res.distantRows() {
		if r.RTTms != 30 || r.Projects != 1000 {
			continue
		}
		qa, qb := r.QueueP99A, r.QueueP99B
		res.Targets = append(res.Targets,
			Target{Name: "distant upstream, 30 ms, 1,000 projects: A/B messages per second", Goal: ">= 3",
				Value: fmt.Sprintf("%.2f (A %.1f, B %.1f msg/s)", r.AOverB, r.Postern, r.Direct), Met: r.AOverB >= 3},
			Target{Name: "distant upstream, 30 ms, 1,000 projects: A's p99 queue delay / B's", Goal: "<= 1/3",
				Value: fmt.Sprintf("A %.2fs, B %.2fs", qa, qb), Met: qb > 0 && qa <= qb/3},
			Target{Name: "distant upstream, 30 ms, 1,000 projects: 421 for A over the mailbox limit", Goal: "0",
				Value: fmt.Sprintf("%d (B: %d)", r.RefusedA, r.RefusedB), Met: r.RefusedA == 0})
	}
	if x := res.XOAUTH2; x != nil {
		res.Targets = append(res.Targets, Target{Name: "deliveries waiting on a token refresh (XOAUTH2)", Goal: "0",
			Value: fmt.Sprintf("%d (postern_token_refresh_waits_total; %d refreshes during the run)", x.RefreshWaits, x.Refreshes), Met: x.RefreshWaits == 0 && x.Refreshes > 0})
	}
	if st := res.Store; len(res.Cells) > 0 {
		value := fmt.Sprintf("%.4f beyond the periodic reloads (%d reads during %d messages in %.0fs of path-A cells; reload_interval allows %d; store %s)",
			st.ExtraPerMessage, st.PosternReads, st.Deliveries, st.PosternSeconds, st.Periodic, st.Store)
		met := st.Deliveries > 0 && st.PosternReads <= st.Periodic
		if st.Store == "vault" {
			value += fmt.Sprintf("; Vault record reads %d", st.VaultRecordReads)
			met = met && st.VaultRecordReads == 0
		}
		res.Targets = append(res.Targets, Target{Name: "store reads per message delivered through Postern", Goal: "0 (steady state)", Value: value, Met: met})
	}
	if s := res.Scale; s != nil {
		res.Targets = append(res.Targets, Target{Name: fmt.Sprintf("resident memory with %d projects", s.Projects), Goal: "<= 100 MB",
			Value: fmt.Sprintf("%.1f MB (peak %.1f MB)", s.RSSMB, s.PeakRSSMB), Met: s.RSSMB <= 100})
	}
	if s := res.ScaleLarge; s != nil {
		res.Targets = append(res.Targets,
			Target{Name: fmt.Sprintf("resident memory with %d projects", s.Projects), Goal: "<= 300 MB",
				Value: fmt.Sprintf("%.1f MB (peak %.1f MB)", s.RSSMB, s.PeakRSSMB), Met: s.RSSMB <= 300},
			Target{Name: fmt.Sprintf("start-up to ready with %d projects (file store)", s.Projects), Goal: "<= 10 s",
				Value: fmt.Sprintf("%.2f s", s.StartupSeconds), Met: s.StartupSeconds <= 10},
			Target{Name: fmt.Sprintf("socketmap p99 with %d projects", s.Projects), Goal: "<= 200 µs",
				Value: fmt.Sprintf("%.0f µs (mean %.0f µs)", s.SocketmapP99Micro, s.SocketmapMeanMicro), Met: s.SocketmapP99Micro <= 200})
	}
	if s := res.ScaleVault; s != nil {
		res.Targets = append(res.Targets, Target{Name: fmt.Sprintf("resident memory with %d projects in Vault", s.Projects), Goal: "<= 100 MB",
			Value: fmt.Sprintf("%.1f MB after a full scan (peak %.1f MB)", s.AfterScanRSSMB, s.PeakRSSMB), Met: s.AfterScanRSSMB <= 100})
	}
}

func sizeLabel(size int) string {
	if size%1024 == 0 {
		return fmt.Sprintf("%dKB", size/1024)
	}
	return fmt.Sprintf("%dB", size)
}

// WriteJSON writes res to path.
func (res *Results) WriteJSON(path string) error {
	b, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding the results: %w", err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

// PrintTable writes the human summary.
func (res *Results) PrintTable(w io.Writer) {
	fmt.Fprintf(w, "\nEnd to end through a real Postfix (%d CPUs, Postfix %s), messages/s from the first submission to the last arrival at the sink,\nmedian of %d rounds, the paths in turn (ratios: median of each round's ratio). A = Postfix -> Postern -> sink (STARTTLS+AUTH, pooled);\nB = Postfix's SMTP client -> sink (STARTTLS+AUTH, sender-dependent relayhost and authentication, TLS session cache as Debian's main.cf);\nB-full = B without the TLS session cache (Postfix's default: a full handshake per message); plain = Postfix -> sink (no TLS/AUTH).\n\n",
		res.Machine.CPUs, res.Machine.Postfix, res.Config.Rounds)
	fmt.Fprintf(w, "%-6s %5s %10s %10s %10s %10s %7s %8s %8s %9s %12s\n", "size", "conc", "A postern", "B direct", "B-full", "plain", "A/B", "A/B-full", "A/plain", "CPU busy", "postern ms/msg")
	for _, r := range res.Summary {
		if r.RTTms > 0 || r.Projects > 1 || r.QueueP50A > 0 || r.DeliveredA > 0 {
			continue // a distant row
		}
		fmt.Fprintf(w, "%-6s %5d %10.1f %10.1f %10.1f %10.1f %7.2f %8.2f %8.2f %8.0f%% %12.3f\n", sizeLabel(r.Size), r.Concurrency,
			r.Postern, r.Direct, r.DirectFull, r.Plain, r.AOverB, r.AOverBFull, r.AOverPlain, 100*r.CPUBusyPostern, r.PosternCPUPerMsg)
	}
	if len(res.Added) > 0 {
		fmt.Fprintf(w, "\nPostern's added latency per message on loopback (path A at concurrency 1; Postern's delivery log duration= minus the sink's own\nMAIL FROM to end of data for the same message):\n")
		for _, a := range res.Added {
			fmt.Fprintf(w, "  %-6s p50 %6.0f µs  p99 %6.0f µs  (%d messages)\n", sizeLabel(a.Size), a.P50Micro, a.P99Micro, a.Messages)
		}
	}
	res.printDistant(w)
	if len(res.Sink) > 0 {
		fmt.Fprintf(w, "\nThe sink alone (Go load client, same process as the sink):\n")
		for _, s := range res.Sink {
			fmt.Fprintf(w, "  %-40s %6s c%-3d %8.0f msg/s\n", s.Mode, sizeLabel(s.Size), s.Concurrency, s.Rate)
		}
	}
	if x := res.XOAUTH2; x != nil {
		fmt.Fprintf(w, "\nXOAUTH2 (path A, tokens from oidc-provider living %.0fs, refreshed %.0fs before expiry, i.e. every ~%.0fs):\n",
			x.TokenLifetimeSeconds, x.RefreshMarginSeconds, x.TokenLifetimeSeconds-x.RefreshMarginSeconds)
		for _, c := range x.Cells {
			fmt.Fprintf(w, "  %s c%d: %.1f msg/s (%d messages in %.1fs)\n", sizeLabel(c.Size), c.Concurrency, c.Rate, c.Count, c.Seconds)
		}
		fmt.Fprintf(w, "  refreshes %d, deliveries that waited on a refresh %d (postern_token_refresh_waits_total; %d derived from the log), distinct tokens validated by the sink %d (%d introspections), sink XOAUTH2 sign-ins %d, refusals %d\n",
			x.Refreshes, x.RefreshWaits, x.RefreshWaitsDerived, x.TokensSeen, x.Introspection, x.SinkAuths, x.AuthFailures)
	}
	st := res.Store
	fmt.Fprintf(w, "\nStore (reload_interval %.0fs): %d project reads during the path-A cells (%d messages, %.0fs; periodic reloads allow %d): %.4f per message, %.4f beyond the periodic ones.\n",
		st.ReloadInterval, st.PosternReads, st.Deliveries, st.PosternSeconds, st.Periodic, st.PerMessage, st.ExtraPerMessage)
	fmt.Fprintf(w, "  During the other paths' cells: %d reads for %d messages whose senders Postern does not route (each NOTFOUND lookup may trigger a reload, at most one per 2s).\n",
		st.OtherReads, st.OtherMessages)
	fmt.Fprintf(w, "  Whole end-to-end run: %d reads in %.0fs.\n", st.Reads, st.Seconds)
	if st.Store == "vault" {
		// One line per kind of request: a project's own path is folded into "*".
		byKind := map[string]int{}
		for k, n := range st.VaultRequests {
			if i := strings.Index(k, "/postern/projects/"); i >= 0 {
				k = k[:i] + "/postern/projects/*"
			}
			byKind[k] += n
		}
		var reqs []string
		for k, n := range byKind {
			reqs = append(reqs, fmt.Sprintf("%s x%d", k, n))
		}
		slices.Sort(reqs)
		fmt.Fprintf(w, "  Vault (the store of this run), requests during the path-A cells: %s; record reads (project or token) %d for %d messages.\n",
			strings.Join(reqs, ", "), st.VaultRecordReads, st.Deliveries)
	} else {
		fmt.Fprintf(w, "  The store of this run is the embedded file store (the Vault dev server was not built; make deps builds it).\n")
	}
	for _, s := range []*ScaleResult{res.Scale, res.ScaleLarge} {
		if s == nil {
			continue
		}
		fmt.Fprintf(w, "\nScale, %d projects in the embedded store (%.1f MB, written with boltstore in %.0fs):\n", s.Projects, float64(s.StoreBytes)/(1<<20), s.StoreWriteSeconds)
		fmt.Fprintf(w, "  start-up to /readyz with every project loaded %.2fs; RSS %.1f MB (peak %.1f MB); idle CPU %.1f%% over %.0fs (a reload every 10s finds the store's stamp unchanged)\n",
			s.StartupSeconds, s.RSSMB, s.PeakRSSMB, s.IdleCPUPercent, s.IdleSeconds)
		fmt.Fprintf(w, "  socketmap round trip, known senders: mean %.0f µs, p99 %.0f µs (%d lookups over one connection)\n",
			s.SocketmapMeanMicro, s.SocketmapP99Micro, s.SocketmapLookups)
		fmt.Fprintf(w, "  socketmap round trip, unknown senders: mean %.0f µs, p99 %.0f µs (%d lookups); one that triggers a reload of every project waits %.0f ms\n",
			s.MissMeanMicro, s.MissP99Micro, s.MissLookups, s.MissReloadMillis)
	}
	if s := res.ScaleVault; s != nil {
		fmt.Fprintf(w, "\nScale, %d projects in Vault (written with vaultstore.PutProjects in %.1fs):\n", s.Projects, s.WriteSeconds)
		fmt.Fprintf(w, "  start-up to /readyz with every project loaded %.2fs (%d requests to Vault: the index, the list, one read per project); RSS %.1f MB\n",
			s.StartupSeconds, s.StartupRequests, s.RSSMB)
		fmt.Fprintf(w, "  a full scan (every %.0fs here; full_scan_interval, default 1m): %d requests in %.2fs (one metadata read per project), %d records read again;\n",
			s.FullScanIntervalSeconds, s.FullScanRequests, s.FullScanSeconds, s.FullScanRecordReads)
		fmt.Fprintf(w, "  from ready to the end of that scan (%.0fs): %d requests, Postern CPU %.2fs; RSS after it %.1f MB (peak %.1f MB)\n",
			s.WindowSeconds, s.WindowRequests, s.WindowCPUSeconds, s.AfterScanRSSMB, s.PeakRSSMB)
	}
	if len(res.GoBench) > 0 {
		fmt.Fprintf(w, "\nGo benchmarks (median of runs; full output in go-bench.txt):\n")
		for _, g := range res.GoBench {
			fmt.Fprintf(w, "  %-60s %12.0f ns/op %8.0f B/op %6.0f allocs/op\n", g.Name, g.NsPerOp, g.BytesPerOp, g.AllocsPerOp)
		}
	}
	fmt.Fprintf(w, "\nTargets:\n")
	for _, t := range res.Targets {
		mark := "MISSED"
		if t.Met {
			mark = "met"
		}
		fmt.Fprintf(w, "  [%-6s] %s: goal %s; measured %s\n", mark, t.Name, t.Goal, t.Value)
	}
	fmt.Fprintf(w, "\nTotal time %.0fs\n", res.TotalSeconds)
}

// ReadGoBench reads `go test -bench` output and returns each benchmark's median.
func ReadGoBench(path string) ([]GoBench, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	type vals struct{ ns, b, allocs []float64 }
	got := map[string]*vals{}
	var order []string
	pkg := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		l := sc.Text()
		if p, ok := strings.CutPrefix(l, "pkg: "); ok {
			pkg = p[strings.LastIndexByte(p, '/')+1:]
			continue
		}
		if !strings.HasPrefix(l, "Benchmark") {
			continue
		}
		f := strings.Fields(l)
		if len(f) < 4 {
			continue
		}
		name := pkg + "." + f[0]
		if i := strings.LastIndexByte(name, '-'); i > 0 {
			name = name[:i] // the GOMAXPROCS suffix
		}
		v := got[name]
		if v == nil {
			v = &vals{}
			got[name] = v
			order = append(order, name)
		}
		for i := 2; i+1 < len(f); i += 2 {
			x, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				continue
			}
			switch f[i+1] {
			case "ns/op":
				v.ns = append(v.ns, x)
			case "B/op":
				v.b = append(v.b, x)
			case "allocs/op":
				v.allocs = append(v.allocs, x)
			}
		}
	}
	var out []GoBench
	for _, name := range order {
		v := got[name]
		out = append(out, GoBench{Name: name, Runs: len(v.ns), NsPerOp: median(v.ns), BytesPerOp: median(v.b), AllocsPerOp: median(v.allocs)})
	}
	return out, sc.Err()
}

// distantRows are the rows of the distant cells.
func (res *Results) distantRows() []Row {
	var rows []Row
	for _, r := range res.Summary {
		if r.DeliveredA > 0 || r.DeliveredB > 0 {
			rows = append(rows, r)
		}
	}
	return rows
}

// printDistant writes the table of the distant cells.
func (res *Results) printDistant(w io.Writer) {
	rows := res.distantRows()
	if len(rows) == 0 {
		return
	}
	fmt.Fprintf(w, "\nA distant upstream (a latency proxy in front of a sink allowing %d connections per mailbox, 421 4.3.2 beyond), many projects sending at once,\nPostfix at its default process limit (100) and destination concurrency 100. A = Postfix -> Postern -> proxy -> sink; B = Postfix's SMTP client\n(sender-dependent relayhost and SASL, TLS session cache) -> proxy -> sink. Queue delay = delays= a+b (seconds, p50/p99) from Postfix's log;\nconn/msg = connections the sink accepted per delivered message; 421 = sign-ins refused over the mailbox limit; deliv = share delivered within %s;\nslots = Postfix's delivery agents busy delivering a message, mean/max of samples every %s.\n\n",
		MaxConnsPerMailbox, DistantCellLimit, slotSampleInterval)
	fmt.Fprintf(w, "%-6s %5s %8s %9s %9s %6s %15s %15s %8s %8s %5s %5s %6s %6s %8s %9s %9s\n", "size", "rtt", "projects", "A msg/s", "B msg/s", "A/B",
		"A queue p50/p99", "B queue p50/p99", "A c/msg", "B c/msg", "A421", "B421", "A dlv", "B dlv", "A ms/msg", "A slots", "B slots")
	for _, r := range rows {
		fmt.Fprintf(w, "%-6s %3.0fms %8d %9.1f %9.1f %6.2f %7.2f/%-7.2f %7.2f/%-7.2f %8.3f %8.3f %5d %5d %5.0f%% %5.0f%% %8.3f %5.1f/%-3.0f %5.1f/%-3.0f\n", sizeLabel(r.Size), r.RTTms, r.Projects,
			r.Postern, r.Direct, r.AOverB, r.QueueP50A, r.QueueP99A, r.QueueP50B, r.QueueP99B, r.ConnsPerMsgA, r.ConnsPerMsgB, r.RefusedA, r.RefusedB,
			100*r.DeliveredA, 100*r.DeliveredB, r.PosternCPUPerMsg, r.SlotsMeanA, r.SlotsMaxA, r.SlotsMeanB, r.SlotsMaxB)
	}
}
