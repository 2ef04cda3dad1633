package daemon

import (
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/tidemarkhq/tidemark/admin"
	"github.com/tidemarkhq/tidemark/checkpoints"
	"github.com/tidemarkhq/tidemark/config"
)

// routeRoles is the role each mutating admin route needs; read routes need
// viewer. A mutating route missing here needs admin, and fails
// TestEveryRouteHasItsRole until it is given a role on purpose.
//
// operator steers the pipeline without replaying or undoing anything:
// pausing keeps records in Kafka, a backfill or repair re-emits source
// state at fresh versions, a reconcile round only reads. admin is for what
// moves data backwards or takes a slice out: rewind, abort, rollback, and
// drills (which fire a trigger's action for real).
var routeRoles = map[string]admin.Role{
	"POST /v1/pause":         admin.RoleOperator,
	"POST /v1/resume":        admin.RoleOperator,
	"POST /v1/backfill":      admin.RoleOperator,
	"POST /v1/reconcile":     admin.RoleOperator,
	"POST /v1/repair":        admin.RoleOperator,
	"POST /v1/plan/advance":  admin.RoleOperator,
	"POST /v1/plan/resume":   admin.RoleOperator,
	"POST /v1/rewind":        admin.RoleAdmin,
	"POST /v1/plan/abort":    admin.RoleAdmin,
	"POST /v1/plan/rollback": admin.RoleAdmin,
	"POST /v1/plan/drill":    admin.RoleAdmin,
}

// newAdminServer loads the tokens file and builds the admin API's server.
// Lines without a role keep working as admin, with a warning per name.
func newAdminServer(cfg *config.Config, store checkpoints.Store, log *slog.Logger, reg prometheus.Registerer) (*admin.Server, error) {
	tf, err := admin.LoadTokenFile(cfg.Admin.TokensFile)
	if err != nil {
		return nil, err
	}
	for _, name := range tf.Unroled {
		log.Warn("admin: a token has no role and is treated as admin; add :viewer, :operator or :admin to its line (deprecated: a later release refuses it)",
			"file", cfg.Admin.TokensFile, "name", name)
	}
	return admin.NewServer(tf.Tokens, store, cfg.Admin.OpenStatus, log,
		admin.WithRoles(tf.Roles), admin.WithRouteRoles(routeRoles), admin.WithRegisterer(reg)), nil
}
