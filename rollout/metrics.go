package rollout

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	stage    prometheus.Gauge
	gate     *prometheus.GaugeVec
	gateVal  *prometheus.GaugeVec
	fires    *prometheus.CounterVec
	attempts *prometheus.GaugeVec
	held     prometheus.Gauge
	soft     prometheus.Gauge
	slice    *prometheus.GaugeVec
	drills   *prometheus.CounterVec
	routeGen prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		stage: prometheus.NewGauge(prometheus.GaugeOpts{Name: "tidemark_rollout_stage",
			Help: "Index of the plan's current stage (0 is the first; -1 before it)."}),
		gate: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "tidemark_rollout_gate_state",
			Help: "Each gate of the current stage: 1 pass, 0 pending, -1 fail."}, []string{"gate", "signal"}),
		gateVal: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "tidemark_rollout_gate_value",
			Help: "The latest reading of each gate's signal (absent without data)."}, []string{"gate", "signal"}),
		fires: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tidemark_rollout_trigger_fires_total",
			Help: "Automatic trigger firings by trigger, action carried out, and mode (auto or dry-run)."}, []string{"trigger", "action", "mode"}),
		attempts: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "tidemark_rollout_trigger_attempts",
			Help: "Automatic firings of each trigger in the current stage."}, []string{"trigger"}),
		held: prometheus.NewGauge(prometheus.GaugeOpts{Name: "tidemark_rollout_held",
			Help: "1 while the plan waits for a person (exhausted trigger, hard rollback, abort)."}),
		soft: prometheus.NewGauge(prometheus.GaugeOpts{Name: "tidemark_rollout_soft_rollback",
			Help: "1 while the slice's reads are routed back to legacy."}),
		slice: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "tidemark_rollout_slice_basis_points",
			Help: "Share of each collection's key space the sink writes, in basis points (10000 = all)."}, []string{"collection"}),
		drills: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tidemark_rollout_drills_total",
			Help: "Drills by action and result (pass or fail)."}, []string{"action", "result"}),
		routeGen: prometheus.NewGauge(prometheus.GaugeOpts{Name: "tidemark_rollout_route_generation",
			Help: "Generation of the read-route table; it grows on every routing change."}),
	}
	if reg != nil {
		reg.MustRegister(m.stage, m.gate, m.gateVal, m.fires, m.attempts, m.held, m.soft, m.slice, m.drills, m.routeGen)
	}
	return m
}

func (m *metrics) observe(s Status) {
	m.stage.Set(float64(s.Stage))
	m.gate.Reset()
	m.gateVal.Reset()
	for _, g := range s.Gates {
		v := 0.0
		switch g.State {
		case Pass:
			v = 1
		case Fail:
			v = -1
		}
		m.gate.WithLabelValues(g.Name, g.Signal).Set(v)
		if g.Value != nil {
			m.gateVal.WithLabelValues(g.Name, g.Signal).Set(*g.Value)
		}
	}
	held := 0.0
	if s.Held != "" || s.Aborted {
		held = 1
	}
	m.held.Set(held)
	soft := 0.0
	if s.SoftRollback || s.Aborted {
		soft = 1
	}
	m.soft.Set(soft)
}

func (m *metrics) setSlice(s Slice) {
	m.slice.Reset()
	for ns, bp := range s {
		m.slice.WithLabelValues(ns).Set(float64(bp))
	}
}
