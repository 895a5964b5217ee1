//! The statistics of the reports: spreads of seeds, Welch's t-test with its confidence
//! interval, Holm's adjustment of a family of p-values, the sign test (exact binomial)
//! and Fisher's exact test, with the distributions computed here (Student's t through
//! the regularised incomplete beta by Lentz's continued fraction, Lanczos's log-gamma) so
//! that no statistics library is needed. The tests compare every function with SciPy's
//! numbers (`scripts/stats_reference.py` prints them).

/// Mean, sample standard deviation (0 for one value), min and max.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    /// Number of values.
    pub n: usize,
    /// Mean.
    pub mean: f64,
    /// Sample standard deviation (n − 1).
    pub std: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
}

impl Spread {
    /// The spread of `values` (`None` if empty).
    pub fn of(values: &[f64]) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        let n = values.len();
        let mean = values.iter().sum::<f64>() / n as f64;
        let std = if n > 1 {
            (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        } else {
            0.0
        };
        Some(Self {
            n,
            mean,
            std,
            min: values.iter().copied().fold(f64::INFINITY, f64::min),
            max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        })
    }
}

/// The median of `values` (the mean of the middle two for an even count; NaN-free input
/// assumed, infinities allowed).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        0.5 * (sorted[mid - 1] + sorted[mid])
    }
}

/// Welch's unequal-variance t-test: the two-sided p-value that samples `a` and `b` have
/// the same mean. `None` when either has fewer than two values or both have no
/// variance.
pub fn welch_p(a: &[f64], b: &[f64]) -> Option<f64> {
    Welch::of(a, b).map(|w| w.p)
}

/// Welch's unequal-variance t-test of `a` against `b`, in full.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Welch {
    /// `t = (mean a − mean b) / se`.
    pub t: f64,
    /// Welch–Satterthwaite degrees of freedom.
    pub df: f64,
    /// Two-sided p-value.
    pub p: f64,
    /// `mean a − mean b`.
    pub diff: f64,
    /// Standard error of `diff`.
    pub se: f64,
}

impl Welch {
    /// The test, or `None` when either sample has fewer than two values or both have no
    /// variance (as [`welch_p`]).
    pub fn of(a: &[f64], b: &[f64]) -> Option<Self> {
        let (sa, sb) = (Spread::of(a)?, Spread::of(b)?);
        if sa.n < 2 || sb.n < 2 {
            return None;
        }
        let (va, vb) = (sa.std.powi(2) / sa.n as f64, sb.std.powi(2) / sb.n as f64);
        if va + vb == 0.0 {
            return None;
        }
        let se = (va + vb).sqrt();
        let diff = sa.mean - sb.mean;
        let t = diff / se;
        let df =
            (va + vb).powi(2) / (va.powi(2) / (sa.n - 1) as f64 + vb.powi(2) / (sb.n - 1) as f64);
        Some(Self {
            t,
            df,
            p: student_t_two_sided(t, df),
            diff,
            se,
        })
    }

    /// The `level` (e.g. 0.95) confidence interval of `mean a − mean b`, as SciPy's
    /// `ttest_ind(a, b, equal_var=False).confidence_interval(level)`.
    pub fn interval(&self, level: f64) -> (f64, f64) {
        let half = student_t_quantile(1.0 - level, self.df) * self.se;
        (self.diff - half, self.diff + half)
    }

    /// The smallest `|mean a − mean b|` that would reach two-sided p < `alpha` with these
    /// spreads and seed counts: what "not distinguishable" cannot rule out.
    pub fn detectable(&self, alpha: f64) -> f64 {
        student_t_quantile(alpha, self.df) * self.se
    }
}

/// The `t > 0` with `P(|T| ≥ t) = alpha` for Student's t with `df` degrees of freedom
/// (bisection on [`student_t_two_sided`]).
pub fn student_t_quantile(alpha: f64, df: f64) -> f64 {
    let (mut lo, mut hi) = (0.0, 1.0);
    while student_t_two_sided(hi, df) > alpha && hi < 1e12 {
        hi *= 2.0;
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if student_t_two_sided(mid, df) > alpha {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// Holm's step-down adjustment of a family of p-values (Holm 1979): sorted ascending,
/// the `i`-th (0-based) of `m` becomes `max over j ≤ i of min(1, (m − j)·p_(j))`, returned
/// in the input order. A difference is clear when its adjusted p is below the level:
/// the family-wise error rate is then at most that level.
pub fn holm(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let mut adjusted = vec![0.0; m];
    let mut running: f64 = 0.0;
    for (rank, &k) in order.iter().enumerate() {
        running = running.max(((m - rank) as f64 * p[k]).min(1.0));
        adjusted[k] = running;
    }
    adjusted
}

/// The two-sided sign test: the exact binomial p-value of `k` successes in `n` fair
/// trials, as SciPy's `binomtest(k, n, 0.5).pvalue` (1 for `n = 0`).
pub fn sign_test(k: usize, n: usize) -> f64 {
    if n == 0 {
        return 1.0;
    }
    let tail = k.min(n - k);
    let cdf: f64 = (0..=tail).map(|j| ln_choose(n, j).exp()).sum::<f64>() * 0.5f64.powi(n as i32);
    (2.0 * cdf).min(1.0)
}

/// Fisher's exact test on the 2×2 table `[[a, b], [c, d]]` (e.g. solved and unsolved seeds
/// of two series): the sample odds ratio `ad/bc` and the two-sided p-value, as SciPy's
/// `fisher_exact` (tables with the same margins no more likely than the observed one).
pub fn fisher_exact(a: usize, b: usize, c: usize, d: usize) -> (f64, f64) {
    let odds = (a * d) as f64 / (b * c) as f64;
    let (row, col, total) = (a + b, a + c, a + b + c + d);
    // P(first cell = x) with the margins fixed: hypergeometric.
    let ln_p =
        |x: usize| ln_choose(row, x) + ln_choose(total - row, col - x) - ln_choose(total, col);
    let observed = ln_p(a);
    let lo = col.saturating_sub(total - row);
    let hi = row.min(col);
    let p: f64 = (lo..=hi)
        .map(ln_p)
        .filter(|&l| l <= observed + 1e-7_f64.ln_1p())
        .map(f64::exp)
        .sum();
    (odds, p.min(1.0))
}

/// `ln C(n, k)`.
fn ln_choose(n: usize, k: usize) -> f64 {
    ln_gamma(n as f64 + 1.0) - ln_gamma(k as f64 + 1.0) - ln_gamma((n - k) as f64 + 1.0)
}

/// P(|T| ≥ |t|) for Student's t with `df` degrees of freedom: I_{df/(df+t²)}(df/2, 1/2).
pub fn student_t_two_sided(t: f64, df: f64) -> f64 {
    regularized_beta(df / (df + t * t), df / 2.0, 0.5)
}

/// The regularized incomplete beta function I_x(a, b), by the continued fraction of
/// Numerical Recipes (§6.4), which converges fast for x < (a + 1)/(a + b + 2); the
/// symmetry I_x(a, b) = 1 − I_{1−x}(b, a) covers the rest.
fn regularized_beta(x: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    if x < (a + 1.0) / (a + b + 2.0) {
        ln_front.exp() * beta_fraction(x, a, b) / a
    } else {
        1.0 - ln_front.exp() * beta_fraction(1.0 - x, b, a) / b
    }
}

/// The continued fraction of the incomplete beta function (modified Lentz).
fn beta_fraction(x: f64, a: f64, b: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let mut c = 1.0;
    let mut d = 1.0 - (a + b) * x / (a + 1.0);
    d = 1.0 / if d.abs() < TINY { TINY } else { d };
    let mut h = d;
    for m in 1..300 {
        let m = m as f64;
        for numerator in [
            m * (b - m) * x / ((a + 2.0 * m - 1.0) * (a + 2.0 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2.0 * m) * (a + 2.0 * m + 1.0)),
        ] {
            d = 1.0 + numerator * d;
            d = 1.0 / if d.abs() < TINY { TINY } else { d };
            c = 1.0 + numerator / c;
            if c.abs() < TINY {
                c = TINY;
            }
            h *= d * c;
        }
        if (d * c - 1.0).abs() < 1e-15 {
            break;
        }
    }
    h
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7, 9 terms; about 15 significant digits).
fn ln_gamma(x: f64) -> f64 {
    const COEFFICIENTS: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x)Γ(1 − x) = π / sin(πx).
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut sum = COEFFICIENTS[0];
    for (i, c) in COEFFICIENTS.iter().enumerate().skip(1) {
        sum += c / (x + i as f64);
    }
    let t = x + 7.5;
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + sum.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(what: &str, got: f64, want: f64) {
        assert!(
            (got - want).abs() <= 1e-6 * want.abs().max(1.0),
            "{what}: {got} vs SciPy's {want}"
        );
    }

    /// SciPy 1.17.1, printed by `scripts/stats_reference.py`.
    #[test]
    fn welch_with_its_interval_matches_scipy() {
        let cases: [(&[f64], &[f64], [f64; 5]); 2] = [
            (
                &[1.0, 2.5, 3.1, 4.7],
                &[2.2, 5.1, 6.3],
                [
                    -1.1883109556513356,
                    3.5266886711805854,
                    0.30852766542164684,
                    -5.920197670200427,
                    2.5035310035337606,
                ],
            ),
            (
                &[-3.1, -2.9, -3.4, -3.0, -2.7],
                &[-2.1, -2.6, -1.9, -2.4, -2.2],
                [
                    -4.66139157640414,
                    7.985333061723365,
                    0.001628470832096602,
                    -1.1659916963118169,
                    -0.39400830368818446,
                ],
            ),
        ];
        for (a, b, [t, df, p, lo, hi]) in cases {
            let w = Welch::of(a, b).unwrap();
            let (l, h) = w.interval(0.95);
            for (what, got, want) in [
                ("t", w.t, t),
                ("df", w.df, df),
                ("p", w.p, p),
                ("lo", l, lo),
                ("hi", h, hi),
            ] {
                close(what, got, want);
            }
            assert_eq!(welch_p(a, b), Some(w.p));
        }
    }

    #[test]
    fn t_quantiles_match_scipy() {
        for (alpha, df, want) in [
            (0.05, 3.7, 2.8675207071911895),
            (0.01, 12.0, 3.0545395893929013),
            (0.05, 1.5, 6.016663104427929),
        ] {
            close("t quantile", student_t_quantile(alpha, df), want);
        }
    }

    #[test]
    fn sign_test_matches_scipy_binomtest() {
        for (k, n, want) in [
            (7, 9, 0.1796875),
            (2, 10, 0.109375),
            (5, 10, 1.0),
            (0, 3, 0.25),
            (9, 9, 0.00390625),
        ] {
            close(&format!("binomtest({k}, {n})"), sign_test(k, n), want);
        }
        assert_eq!(sign_test(0, 0), 1.0);
    }

    #[test]
    fn fisher_exact_matches_scipy() {
        for (a, b, c, d, odds, p) in [
            (3, 0, 0, 3, f64::INFINITY, 0.10000000000000002),
            (5, 1, 2, 4, 10.0, 0.24242424242424246),
            (1, 4, 3, 2, 0.16666666666666666, 0.5238095238095238),
            (5, 0, 1, 4, f64::INFINITY, 0.047619047619047616),
        ] {
            let (got_odds, got_p) = fisher_exact(a, b, c, d);
            if odds.is_finite() {
                close("odds ratio", got_odds, odds);
            } else {
                assert_eq!(got_odds, odds);
            }
            close(&format!("fisher [[{a}, {b}], [{c}, {d}]]"), got_p, p);
        }
    }

    #[test]
    fn holm_by_its_definition() {
        // Sorted: 0.005·5 = 0.025, 0.01·4 = 0.04, 0.03·3 = 0.09, 0.04·2 = 0.08 → 0.09
        // (monotone), 0.2·1 = 0.2.
        let got = holm(&[0.01, 0.04, 0.03, 0.005, 0.2]);
        for (g, w) in got.iter().zip([0.04, 0.09, 0.09, 0.025, 0.2]) {
            close("holm", *g, w);
        }
        assert!(holm(&[]).is_empty());
    }

    #[test]
    fn ln_gamma_matches_factorials_and_sqrt_pi() {
        // Γ(5) = 24, Γ(0.5) = √π, Γ(10) = 362880.
        assert!((ln_gamma(5.0) - 24f64.ln()).abs() < 1e-13);
        assert!((ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-13);
        assert!((ln_gamma(10.0) - 362_880f64.ln()).abs() < 1e-12);
    }

    #[test]
    fn student_t_matches_the_tables() {
        // Two-sided 5% critical values: 12.706 (df 1), 2.228 (df 10), 1.960 (df ∞).
        assert!((student_t_two_sided(12.706_204, 1.0) - 0.05).abs() < 1e-6);
        assert!((student_t_two_sided(2.228_139, 10.0) - 0.05).abs() < 1e-6);
        assert!((student_t_two_sided(1.959_964, 1e7) - 0.05).abs() < 1e-5);
        // df = 1 is the Cauchy distribution: P(|T| ≥ 1) = 1/2 exactly.
        assert!((student_t_two_sided(1.0, 1.0) - 0.5).abs() < 1e-12);
        // 1% critical value for df 4.
        assert!((student_t_two_sided(4.604_095, 4.0) - 0.01).abs() < 1e-6);
        assert!((student_t_two_sided(0.0, 3.0) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn welch_on_a_worked_example() {
        // a: mean 2, var 1; b: mean 5, var 1; n = 3 each. t = −3/√(2/3) = −3.674,
        // df = (2/3)² / (2·(1/3)²/2) = 4; two-sided p = 0.02131 (t-tables, df 4).
        let p = welch_p(&[1.0, 2.0, 3.0], &[4.0, 5.0, 6.0]).unwrap();
        assert!((p - 0.021_312).abs() < 1e-5, "{p}");
        assert_eq!(welch_p(&[1.0], &[2.0, 3.0]), None);
        assert_eq!(welch_p(&[1.0, 1.0], &[2.0, 2.0]), None);
    }

    #[test]
    fn spread_of_values() {
        let s = Spread::of(&[1.0, 2.0, 3.0, 6.0]).unwrap();
        // mean 3, squared deviations 4 + 1 + 0 + 9 = 14, std = √(14/3).
        assert_eq!((s.n, s.mean, s.min, s.max), (4, 3.0, 1.0, 6.0));
        assert!((s.std - (14.0f64 / 3.0).sqrt()).abs() < 1e-15);
        assert_eq!(Spread::of(&[]), None);
    }
}
