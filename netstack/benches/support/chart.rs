//! Line charts as SVG for the benchmarks that draw what they print (the services and
//! soak benchmarks include this file by path: benches of two crates, one drawer).

/// A line: its name, colour and (x, y) points; points with a y that is not finite
/// (a figure that could not be measured) are left out.
pub type Series<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

/// One panel: a title, x from 0 to `x_max`, labels under the x axis, and its lines
/// (y from 0 to a tenth above the largest value).
pub struct Panel<'a> {
    pub title: &'a str,
    pub x_max: f64,
    pub ticks: Vec<(f64, String)>,
    pub series: Vec<Series<'a>>,
}

/// The panels one above the other, 720 pixels wide.
pub fn draw(panels: &[Panel]) -> String {
    let (w, h, pad) = (720.0, 230.0, 50.0);
    let mut out = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{}' font-family='sans-serif' font-size='12'>\n",
        panels.len() as f64 * (h + 20.0) + 20.0
    );
    for (n, p) in panels.iter().enumerate() {
        let top = n as f64 * (h + 20.0);
        let max = p.series.iter().flat_map(|(_, _, pts)| pts.iter().map(|(_, y)| *y)).filter(|v| v.is_finite()).fold(0.01, f64::max) * 1.1;
        let x = |v: f64| pad + (w - 2.0 * pad) * v / p.x_max.max(f64::MIN_POSITIVE);
        let y = |v: f64| top + h - pad - (h - 2.0 * pad) * v / max;
        out.push_str(&format!("<text x='{pad}' y='{}'>{}</text>\n", top + 20.0, p.title));
        out.push_str(&format!(
            "<line x1='{pad}' y1='{0}' x2='{1}' y2='{0}' stroke='black'/><line x1='{pad}' y1='{2}' x2='{pad}' y2='{0}' stroke='black'/>\n",
            y(0.0),
            w - pad,
            y(max)
        ));
        let digits = if max < 10.0 { 2 } else { 0 };
        out.push_str(&format!("<text x='5' y='{}'>{max:.digits$}</text><text x='5' y='{}'>0</text>\n", y(max) + 4.0, y(0.0)));
        for (at, label) in &p.ticks {
            out.push_str(&format!("<text x='{}' y='{}' text-anchor='middle'>{label}</text>\n", x(*at), y(0.0) + 16.0));
        }
        for (i, (name, colour, points)) in p.series.iter().enumerate() {
            let shown: Vec<(f64, f64)> = points.iter().filter(|(_, v)| v.is_finite()).map(|(a, v)| (x(*a), y(*v))).collect();
            let path: Vec<String> = shown.iter().map(|(a, v)| format!("{a:.1},{v:.1}")).collect();
            out.push_str(&format!("<polyline fill='none' stroke='{colour}' stroke-width='2' points='{}'/>\n", path.join(" ")));
            if shown.len() < 20 {
                for (a, v) in &shown {
                    out.push_str(&format!("<circle cx='{a:.1}' cy='{v:.1}' r='3' fill='{colour}'/>\n"));
                }
            }
            out.push_str(&format!("<text x='{}' y='{}' fill='{colour}'>{name}</text>\n", pad + 330.0, top + 20.0 + 14.0 * i as f64));
        }
    }
    out.push_str("</svg>\n");
    out
}
