// example_norms: the three normalizations of prenorm's ops module on an Eigen
// matrix. Activations are row-major [tokens x d]; every row is normalized on
// its own:
//   LayerNorm  y = gamma * (x - mean(x)) / sqrt(var(x) + eps) + beta
//   RMSNorm    y = gamma * x / sqrt(mean(x^2) + eps)
//   CRMSNorm   on x~ = compress(x) [tokens x (d-1)], the first d-1 coordinates
//              of a zero-mean x: y~ = x~ / sqrt((||x~||^2 + (1'x~)^2) / d + eps)
// It checks LayerNorm(x) = gamma * RMSNorm(x - mean(x)) + beta and, for
// zero-mean rows, CRMSNorm(compress(x)) = compress(RMSNorm(x)). Exit code 1 if not.

#include <prenorm/ops.hpp>

#include <cstdio>

int main() {
  using Matrix = prenorm::RowMatrix<double>;  // row-major [rows x cols]
  using Vec = prenorm::Vector<double>;
  const prenorm::Index tokens = 4, d = 8;

  const Matrix x = Matrix::Random(tokens, d);               // [tokens x d]
  const Vec gamma = Vec::LinSpaced(d, 0.5, 2.0);            // [d]
  const Vec beta = Vec::LinSpaced(d, -1.0, 1.0);            // [d]
  const Matrix z = x.colwise() - x.rowwise().mean();        // [tokens x d], zero-mean rows

  // LayerNorm and RMSNorm, with their affine. Outputs have the input's shape.
  Matrix ln(tokens, d), rms(tokens, d);
  prenorm::layer_norm_forward(x, gamma, beta, ln);          // [tokens x d]
  prenorm::rms_norm_forward(z, gamma, rms);                 // [tokens x d]
  const Matrix ln_via_rms = rms.rowwise() + beta.transpose();

  // CRMSNorm reads the compressed rows (width d - 1) and has no affine: in a
  // converted model gamma and beta are folded into the next linear layer.
  Matrix zc(tokens, d - 1), crms(tokens, d - 1);
  prenorm::compress(z, zc);                                 // [tokens x (d-1)]
  prenorm::crms_norm_forward(zc, crms);                     // [tokens x (d-1)]

  Matrix rms_plain(tokens, d), rms_plain_c(tokens, d - 1), back(tokens, d);
  prenorm::rms_norm_forward(z, rms_plain);                  // [tokens x d], no gamma
  prenorm::compress(rms_plain, rms_plain_c);                // [tokens x (d-1)]
  prenorm::decompress(crms, back);                          // [tokens x d]: last column -sum

  const double ln_diff = (ln - ln_via_rms).cwiseAbs().maxCoeff();
  const double crms_diff = (crms - rms_plain_c).cwiseAbs().maxCoeff();
  const double back_diff = (back - rms_plain).cwiseAbs().maxCoeff();
  std::printf("max |LayerNorm(x) - (gamma * RMSNorm(x - mean) + beta)|   = %.2e\n", ln_diff);
  std::printf("max |CRMSNorm(compress(z)) - compress(RMSNorm(z))|        = %.2e\n", crms_diff);
  std::printf("max |decompress(CRMSNorm(compress(z))) - RMSNorm(z)|      = %.2e\n", back_diff);

  const double tolerance = 1e-12;  // double rounding; the identities are exact
  const bool ok = ln_diff <= tolerance && crms_diff <= tolerance && back_diff <= tolerance;
  std::printf("%s\n", ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}
