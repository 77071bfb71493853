package bench

import (
	"fmt"
	"image"
	"image/color"
	"image/png"
	"math"
	"os"
	"slices"
)

// series is one line of the chart.
type series struct {
	label string
	color color.RGBA
	pts   map[int]float64 // concurrency → msg/s
}

var (
	colPostern    = color.RGBA{0x1f, 0x77, 0xb4, 0xff}
	colDirect     = color.RGBA{0xd6, 0x27, 0x28, 0xff}
	colDirectFull = color.RGBA{0xff, 0x7f, 0x0e, 0xff}
	colPlain      = color.RGBA{0x7f, 0x7f, 0x7f, 0xff}
	colXOAUTH2    = color.RGBA{0x2c, 0xa0, 0x2c, 0xff}
	colAxis       = color.RGBA{0x20, 0x20, 0x20, 0xff}
	colGrid       = color.RGBA{0xe4, 0xe4, 0xe4, 0xff}
)

// WriteChart draws throughput against concurrency, one panel per message size, and below it, with
// the distant cells, throughput against the number of projects, one panel per round-trip time, to
// path (PNG).
func (res *Results) WriteChart(path string) error {
	var sizes []int
	var rtts []float64
	distant := res.distantRows()
	for _, r := range distant {
		if !slices.Contains(rtts, r.RTTms) {
			rtts = append(rtts, r.RTTms)
		}
	}
	for _, r := range res.Summary {
		if slices.Contains(distant, r) {
			continue
		}
		if !slices.Contains(sizes, r.Size) {
			sizes = append(sizes, r.Size)
		}
	}
	if len(sizes) == 0 {
		return fmt.Errorf("drawing the chart: no measurements")
	}
	const panelW, panelH, top, legendH = 560, 420, 60, 140
	rows := 1
	if len(rtts) > 0 {
		rows = 2
	}
	w, h := panelW*max(len(sizes), len(rtts)), top+rows*panelH+legendH
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	fillRect(img, 0, 0, w, h, color.White)
	title := "THROUGHPUT VS CONCURRENCY (MSG/S, END TO END THROUGH POSTFIX)"
	drawText(img, (w-textWidth(title, 2))/2, 16, title, 2, colAxis)

	for i, size := range sizes {
		var all []series
		a := series{label: "A postern", color: colPostern, pts: map[int]float64{}}
		b := series{label: "B postfix direct", color: colDirect, pts: map[int]float64{}}
		bf := series{label: "B-full", color: colDirectFull, pts: map[int]float64{}}
		p := series{label: "plain relay", color: colPlain, pts: map[int]float64{}}
		for _, r := range res.Summary {
			if r.Size != size || slices.Contains(distant, r) {
				continue
			}
			a.pts[r.Concurrency], b.pts[r.Concurrency], p.pts[r.Concurrency] = r.Postern, r.Direct, r.Plain
			if r.DirectFull > 0 {
				bf.pts[r.Concurrency] = r.DirectFull
			}
		}
		all = append(all, p, a, b)
		if len(bf.pts) > 0 {
			all = append(all, bf)
		}
		if res.XOAUTH2 != nil {
			x := series{label: "A xoauth2", color: colXOAUTH2, pts: map[int]float64{}}
			for _, c := range res.XOAUTH2.Cells {
				if c.Size == size {
					x.pts[c.Concurrency] = c.Rate
				}
			}
			if len(x.pts) > 0 {
				all = append(all, x)
			}
		}
		drawPanel(img, image.Rect(i*panelW, top, (i+1)*panelW, top+panelH), sizeLabel(size)+" messages", res.Config.Steps, all,
			"concurrency (smtp-source sessions = destination concurrency)")
	}
	for i, rtt := range rtts {
		a := series{label: "A postern", color: colPostern, pts: map[int]float64{}}
		b := series{label: "B postfix direct", color: colDirect, pts: map[int]float64{}}
		var projects []int
		for _, r := range distant {
			if r.RTTms == rtt {
				a.pts[r.Projects], b.pts[r.Projects] = r.Postern, r.Direct
				projects = append(projects, r.Projects)
			}
		}
		drawPanel(img, image.Rect(i*panelW, top+panelH, (i+1)*panelW, top+2*panelH), fmt.Sprintf("rtt %.0f ms, 1kb", rtt), projects,
			[]series{a, b}, "projects sending at once (3 connections per mailbox)")
	}

	// Legend.
	legend := []series{
		{label: "A: postfix > postern > sink (starttls+auth, pooled)", color: colPostern},
		{label: "B: postfix smtp > sink (starttls+auth, sender-dependent)", color: colDirect},
		{label: "B-full: as b, without the tls session cache (full handshakes)", color: colDirectFull},
		{label: "plain: postfix > sink (no tls, no auth)", color: colPlain},
	}
	if res.XOAUTH2 != nil {
		legend = append(legend, series{label: "A with xoauth2, tokens refreshed every few s", color: colXOAUTH2})
	}
	x, y := 80, top+rows*panelH+8
	for i, s := range legend {
		ly := y + i*24
		fillRect(img, x, ly+3, 24, 8, s.color)
		drawText(img, x+32, ly, s.label, 2, colAxis)
	}

	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("writing the chart: %w", err)
	}
	if err := png.Encode(f, img); err != nil {
		f.Close()
		return fmt.Errorf("writing the chart %s: %w", path, err)
	}
	return f.Close()
}

// drawPanel draws one size's axes and lines in r. The x axis is logarithmic in concurrency.
func drawPanel(img *image.RGBA, r image.Rectangle, title string, steps []int, all []series, axis string) {
	left, right, top, bottom := r.Min.X+80, r.Max.X-30, r.Min.Y+40, r.Max.Y-50
	drawText(img, r.Min.X+(r.Dx()-textWidth(title, 2))/2, r.Min.Y+8, title, 2, colAxis)
	maxY := 0.0
	for _, s := range all {
		for _, v := range s.pts {
			maxY = math.Max(maxY, v)
		}
	}
	step := niceStep(maxY / 5)
	maxY = math.Ceil(maxY*1.05/step) * step
	if maxY == 0 {
		maxY = 1
	}
	yOf := func(v float64) int { return bottom - int(v/maxY*float64(bottom-top)) }
	lo, hi := math.Log(float64(slices.Min(steps))), math.Log(float64(slices.Max(steps)))
	xOf := func(c int) int {
		if hi == lo {
			return (left + right) / 2
		}
		return left + 20 + int((math.Log(float64(c))-lo)/(hi-lo)*float64(right-left-40))
	}
	for v := 0.0; v <= maxY+step/2; v += step {
		y := yOf(v)
		fillRect(img, left, y, right-left, 1, colGrid)
		label := fmt.Sprintf("%.0f", v)
		drawText(img, left-10-textWidth(label, 2), y-7, label, 2, colAxis)
	}
	fillRect(img, left, top, 2, bottom-top+1, colAxis)
	fillRect(img, left, bottom, right-left, 2, colAxis)
	for _, c := range steps {
		x := xOf(c)
		fillRect(img, x, bottom, 2, 6, colAxis)
		label := fmt.Sprint(c)
		drawText(img, x-textWidth(label, 2)/2, bottom+10, label, 2, colAxis)
	}
	drawText(img, left+(right-left-textWidth(axis, 1))/2, bottom+30, axis, 1, colAxis)
	drawText(img, r.Min.X+10, top-32, "msg/s", 2, colAxis)

	for _, s := range all {
		var cs []int
		for c := range s.pts {
			cs = append(cs, c)
		}
		slices.Sort(cs)
		for i, c := range cs {
			x, y := xOf(c), yOf(s.pts[c])
			fillRect(img, x-5, y-5, 11, 11, s.color)
			if i > 0 {
				drawLine(img, xOf(cs[i-1]), yOf(s.pts[cs[i-1]]), x, y, 3, s.color)
			}
		}
	}
}

// drawLine draws a line of the given thickness from (x0, y0) to (x1, y1).
func drawLine(img *image.RGBA, x0, y0, x1, y1, thick int, c color.Color) {
	n := max(abs(x1-x0), abs(y1-y0))
	for i := 0; i <= n; i++ {
		x := x0 + (x1-x0)*i/max(n, 1)
		y := y0 + (y1-y0)*i/max(n, 1)
		fillRect(img, x-thick/2, y-thick/2, thick, thick, c)
	}
}

func abs(x int) int {
	if x < 0 {
		return -x
	}
	return x
}

// niceStep rounds x up to 1, 2 or 5 times a power of ten.
func niceStep(x float64) float64 {
	if x <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(x)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= x {
			return m * p
		}
	}
	return 10 * p
}
